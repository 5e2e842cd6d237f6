"""Running at scale: preemption (signal -> checkpoint -> exit), auto-resume, and reference
log-probs precomputed once per dataset and cached on disk."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import time
import uuid
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import TrainerCallback

log = logging.getLogger("aot")
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)  # Slurm: SIGTERM on preemption, USR1 before the time limit


#: Keys that do not change what a run trains: where it is written, how it was started, and how
#: log-probs are chunked (equal to float tolerance either way; tests/test_logps.py).
RUN_ID_IGNORED = ("output_dir", "train.resume", "train.logps_chunk")


def run_identity(cfg) -> dict:
    """The composed config as flat dotted keys, minus ``RUN_ID_IGNORED``, and its hash."""
    from omegaconf import OmegaConf

    flat = {}

    def walk(node, prefix=""):
        for key, value in node.items():
            name = f"{prefix}{key}"
            if isinstance(value, dict):
                walk(value, name + ".")
            elif name not in RUN_ID_IGNORED:
                flat[name] = value

    walk(OmegaConf.to_container(cfg, resolve=True))
    digest = hashlib.sha1(json.dumps(flat, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return {"config_hash": digest, "config": flat}


def check_run_dir(out: Path, identity: dict, resume: str) -> str:
    """What ``out`` holds for this config: "new", "resume" (checkpoints of this config) or
    "finished" (its final model and metrics). A directory written by another config stops the
    run with the keys that differ; it is never resumed."""
    from aot.config import ConfigError

    recorded = out / "run.json"
    checkpoints = any(out.glob("checkpoint-*/trainer_state.json"))
    if recorded.is_file() and resume != "never":
        old = json.loads(recorded.read_text())
        if old["config_hash"] != identity["config_hash"]:
            a, b = old["config"], identity["config"]
            diff = [
                f"{k}: {a.get(k, '<unset>')!r} -> {b.get(k, '<unset>')!r}"
                for k in sorted(a.keys() | b.keys())
                if a.get(k) != b.get(k)
            ]
            raise ConfigError(
                f"{out} holds a run of another config ({'; '.join(diff)}); it will not be resumed or "
                "overwritten. Use another output_dir (the default one carries a hash of your overrides), "
                "or train.resume=never to start this config afresh there."
            )
        if (out / "metrics.json").is_file():
            return "finished"
    elif checkpoints and resume == "auto":
        raise ConfigError(
            f"{out} has checkpoints but no run.json saying which config wrote them; it will not be "
            "resumed. Use another output_dir, or train.resume=never (or a checkpoint path) to decide."
        )
    return "resume" if checkpoints else "new"


class StopOnSignal(TrainerCallback):
    """On SIGTERM or SIGUSR1 (to any rank), or once the stop file ``$AOT_STOP_FILE`` exists
    (slurm/train.sh creates it when the time limit nears): finish the current step, save a
    checkpoint, stop. Also measures how long a step and a checkpoint take, and warns when the
    two together would not fit in the lead time the launcher gives (``$AOT_STOP_LEAD_S``)."""

    def __init__(self):
        self.requested, self.stopped_at, self._previous = False, None, {}
        self.stop_file = os.environ.get("AOT_STOP_FILE") or None
        self.lead = float(os.environ.get("AOT_STOP_LEAD_S", "0")) or None
        self.step_seconds, self.save_seconds, self._t = 0.0, 0.0, None
        self._warned = False

    def _handler(self, signum, frame):
        self.requested = True
        log.info("received %s: will checkpoint after this step and exit", signal.Signals(signum).name)

    def on_train_begin(self, args, state, control, **kwargs):
        for sig in SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handler)
        self._t = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        now = time.monotonic()
        self.step_seconds, self._t = max(self.step_seconds, now - self._t), now
        requested = self.requested
        if not requested and self.stop_file and args.process_index == 0 and os.path.exists(self.stop_file):
            log.info("stop file %s found: will checkpoint after this step and exit", self.stop_file)
            requested = self.requested = True
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

    def on_save(self, args, state, control, **kwargs):
        now = time.monotonic()
        self.save_seconds, self._t = max(self.save_seconds, now - self._t), now
        needed = self.step_seconds + self.save_seconds
        if self.lead and not self._warned:
            self._warned = True
            fits = needed <= self.lead
            (log.info if fits else log.warning)(
                "preemption: a step takes up to %.1f s and a checkpoint %.1f s, so a stop request needs "
                "up to %.1f s; the launcher's lead time is %.0f s%s",
                self.step_seconds,
                self.save_seconds,
                needed,
                self.lead,
                ""
                if fits
                else " (too short: raise --signal and STOP_LEAD in slurm/train.sh, "
                "or rely on train.save_steps checkpoints)",
            )

    def on_train_end(self, args, state, control, **kwargs):
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)


def _model_identity(path: str, revision: str | None = None) -> dict:
    """A model's name plus what pins its weights: for a local directory the size and mtime of its
    weight/config files; for a hub id the commit of the snapshot it was loaded from."""
    files = {}
    if Path(path).is_dir():
        for f in sorted(Path(path).iterdir()):
            if f.suffix in (".safetensors", ".bin", ".json"):
                files[f.name] = [f.stat().st_size, int(f.stat().st_mtime)]
        return {"model": path, "files": files}
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(path, "config.json", revision=revision)
    commit = Path(cached).parent.name if isinstance(cached, str) else None  # .../snapshots/<sha>/config.json
    return {"model": path, "revision": revision, "commit": commit}


def ref_cache_key(cfg, path: str, features: list[dict], autocast: str = "no") -> str:
    """Keyed on the model (and its commit), dtype, attention implementation, the autocast the
    training forward runs under, and the exact token ids (so data and tokenisation)."""
    identity = {
        **_model_identity(path, cfg.model.get("revision")),
        "dtype": cfg.model.dtype,
        "attn_implementation": cfg.model.attn_implementation,
        "autocast": autocast,
    }
    h = hashlib.sha1(json.dumps(identity, sort_keys=True).encode())
    for f in features:
        for key in ("prompt_ids", "chosen_ids", "rejected_ids", "completion_ids"):
            if key in f:
                h.update(key.encode())
                h.update(torch.tensor(f[key], dtype=torch.int64).numpy().tobytes())
    return h.hexdigest()[:16]


def attach_ref_logps(cfg, path, trainer, features: list[dict], collator) -> Path:
    """Add ``ref_logps`` to every feature, from the disk cache or computed once.

    Runs once the trainer has prepared the model (``AfterPreparation``): the rows are split
    across every rank and go through the prepared reference (sharded under FSDP/ZeRO-3, under
    the run's autocast), then gathered. Only the global main process reads and writes the cache
    (a unique temporary name, then an atomic rename) and broadcasts a cached table, so several
    nodes never race on a shared filesystem nor need one. Returns the cache file."""
    from accelerate.utils import broadcast_object_list

    from aot.distributed import prepared_row_logps
    from aot.tiny import cache_dir

    acc = trainer.accelerator
    key = ref_cache_key(cfg, path, features, autocast=acc.mixed_precision)
    cache = cache_dir() / "ref_logps" / f"{key}.pt"
    found = [torch.load(cache) if acc.is_main_process and cache.is_file() else None]
    if acc.num_processes > 1:
        broadcast_object_list(found)
    rows = found[0]
    if rows is not None:
        log.info("reference log-probs: loaded %s", cache)
    else:
        rows = prepared_row_logps(
            trainer, features, collator, trainer.args.per_device_eval_batch_size, reference=True
        )
        if acc.is_main_process:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.parent / f".{cache.name}.{uuid.uuid4().hex}.tmp"
            torch.save(rows, tmp)
            os.replace(tmp, cache)
        log.info(
            "reference log-probs: computed for %d rows on %d ranks, cached in %s",
            len(rows),
            acc.num_processes,
            cache,
        )
    for feature, row in zip(features, rows.tolist()):
        feature["ref_logps"] = row
    return cache
