"""Running at scale: preemption (signal -> checkpoint -> exit), auto-resume, and reference
log-probs precomputed once per dataset and cached on disk."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import signal
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import TrainerCallback

log = logging.getLogger("aot")
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)  # Slurm: SIGTERM on preemption, USR1 before the time limit


def find_checkpoint(output_dir: str | Path) -> str | None:
    """The newest ``checkpoint-<step>`` directory with trainer state in ``output_dir``."""
    steps = []
    for path in Path(output_dir).glob("checkpoint-*"):
        match = re.fullmatch(r"checkpoint-(\d+)", path.name)
        if match and (path / "trainer_state.json").is_file():
            steps.append((int(match.group(1)), path))
    return str(max(steps)[1]) if steps else None


class StopOnSignal(TrainerCallback):
    """On SIGTERM or SIGUSR1 (to any rank): finish the current step, save a checkpoint, stop."""

    def __init__(self):
        self.requested, self.stopped_at, self._previous = False, None, {}

    def _handler(self, signum, frame):
        self.requested = True
        log.info("received %s: will checkpoint after this step and exit", signal.Signals(signum).name)

    def on_train_begin(self, args, state, control, **kwargs):
        for sig in SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handler)

    def on_step_end(self, args, state, control, **kwargs):
        requested = self.requested
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            # Every rank must stop (and join the checkpoint's collectives) at the same step, even
            # when the signal reached them on either side of a step boundary.
            flag = torch.tensor([float(requested)], device=args.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            requested = bool(flag.item())
        if requested:
            control.should_save = True
            control.should_training_stop = True
            self.stopped_at = state.global_step
        return control

    def on_train_end(self, args, state, control, **kwargs):
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)


def _model_identity(path: str) -> dict:
    """A model's name plus, for a local directory, the size and mtime of its weight/config files."""
    files = {}
    if Path(path).is_dir():
        for f in sorted(Path(path).iterdir()):
            if f.suffix in (".safetensors", ".bin", ".json"):
                files[f.name] = [f.stat().st_size, int(f.stat().st_mtime)]
    return {"model": path, "files": files}


def ref_cache_key(cfg, path: str, features: list[dict]) -> str:
    """Keyed on the model, its dtype and the exact token ids (so data and tokenisation)."""
    h = hashlib.sha1(json.dumps({**_model_identity(path), "dtype": cfg.model.dtype}, sort_keys=True).encode())
    for f in features:
        for key in ("prompt_ids", "chosen_ids", "rejected_ids", "completion_ids"):
            if key in f:
                h.update(key.encode())
                h.update(torch.tensor(f[key], dtype=torch.int64).numpy().tobytes())
    return h.hexdigest()[:16]


def attach_ref_logps(cfg, path, policy, reference, features: list[dict], collator, args) -> Path:
    """Add ``ref_logps`` to every feature, from the disk cache or computed once (main process
    first; the other ranks then read the cache). Returns the cache file."""
    from aot.tiny import cache_dir
    from aot.trainer import reference_of, row_logps

    cache = cache_dir() / "ref_logps" / f"{ref_cache_key(cfg, path, features)}.pt"
    with args.main_process_first(desc="reference log-probs"):
        if cache.is_file():
            rows = torch.load(cache)
            log.info("reference log-probs: loaded %s", cache)
        else:
            device = next(policy.parameters()).device
            with reference_of(policy, reference) as ref:
                was_training = ref.training
                rows = row_logps(ref.eval(), features, collator, args.per_device_eval_batch_size, device)
                ref.train(was_training)
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(".tmp")
            torch.save(rows, tmp)
            tmp.rename(cache)
            log.info("reference log-probs: computed for %d rows, cached in %s", len(rows), cache)
    for feature, row in zip(features, rows.tolist()):
        feature["ref_logps"] = row
    return cache
