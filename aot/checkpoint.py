"""Checkpoints every node can resume from, whether or not the nodes share a disk.

Rules:

- **One decision, taken on global rank 0.** Whether ``output_dir`` holds this config's run, a
  finished one or another config's (``run.json``), and the "before" diagnostics, are read on
  rank 0 and broadcast. Which checkpoint to resume is agreed collectively: the newest step that
  every rank holds complete. No rank acts on files only it can see, so ranks never start from
  different steps (which would mismatch their collectives and hang until the NCCL timeout).
- **Shared or node-local output_dir, detected at start.** Rank 0 writes a token under
  ``output_dir`` and every rank looks for it. Shared: rank 0 writes the files every rank reads
  (trainer state, scheduler). Node-local: the first process of each node writes them to its own
  disk (the Trainer's ``save_on_each_node``, DeepSpeed's ``use_node_local_storage``).
- **Every rank writes its own shard.** Under FSDP2 a checkpoint is one file per rank
  (``shard-rank<r>-of-<w>.pt``, ``aot.shards``) with this rank's slice of every trainable parameter and of the
  optimizer state, written in parallel; nothing is gathered. Under ZeRO-3 DeepSpeed's own
  checkpoint does the same. A LoRA checkpoint also gets the whole adapter (a few MB, gathered)
  for evaluation. The final model is gathered once, at the end, in the model's own dtype.
- **Complete means marked.** Each rank writes ``.complete-rank<r>`` into the checkpoint after its
  last file, so a checkpoint cut short by preemption is never resumed.

A sharded checkpoint resumes with the same number of ranks it was written by.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from pathlib import Path

import torch
from transformers.trainer import SCHEDULER_NAME

from aot.distributed import all_gather_objects, barrier, decide_on_main, is_distributed, rank_and_world
from aot.shards import CheckpointError, gather_weights, load_shard_optimizer, load_shard_params, save_shard

log = logging.getLogger("aot")
CHECKPOINT = re.compile(r"checkpoint-(\d+)")


def _marker(rank: int) -> str:
    return f".complete-rank{rank:05d}"


# --- where the run's files live -------------------------------------------------------------------


def output_dir_is_shared(out: Path) -> bool:
    """True when every rank sees the files global rank 0 writes under ``out`` (one node: always)."""
    out.mkdir(parents=True, exist_ok=True)
    if not is_distributed():
        return True

    def write_token() -> str:
        token = out / f".shared-probe-{uuid.uuid4().hex}"
        token.write_text(token.name)
        return token.name

    name = decide_on_main(write_token)
    try:  # open() revalidates on network filesystems, where a cached directory listing may lag
        visible = (out / name).read_text() == name
    except OSError:
        visible = False
    everyone = all_gather_objects(visible)
    barrier()
    if rank_and_world()[0] == 0:
        (out / name).unlink(missing_ok=True)
    return all(everyone)


def use_node_local_files(trainer, shared: bool) -> None:
    """Point the Trainer's and DeepSpeed's writers at every node's own disk when ``output_dir`` is
    not shared (call before ``train``: DeepSpeed reads its config when the engine is built)."""
    trainer.args.save_on_each_node = not shared
    plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
    if plugin is not None:
        plugin.deepspeed_config.setdefault("checkpoint", {})["use_node_local_storage"] = not shared


# --- which checkpoint ------------------------------------------------------------------------------


def complete_steps(out: Path, rank: int) -> dict[int, Path]:
    """Checkpoints in ``out`` that ``rank`` finished writing and whose trainer state is on its disk."""
    steps = {}
    for path in out.glob("checkpoint-*"):
        match = CHECKPOINT.fullmatch(path.name)
        if match and (path / "trainer_state.json").is_file() and (path / _marker(rank)).is_file():
            steps[int(match.group(1))] = path
    return steps


def newest_checkpoint(out: Path) -> Path | None:
    """This process's newest complete checkpoint (for one-process tools; runs use ``agree_on_checkpoint``)."""
    steps = complete_steps(Path(out), rank_and_world()[0])
    return steps[max(steps)] if steps else None


def agree_on_checkpoint(out: Path, resume: str) -> str | None:
    """The checkpoint every rank resumes from, the same on all of them (collective).

    ``resume`` is ``auto`` (the newest step every rank holds complete), ``never``, or a path that
    every rank must hold. Checkpoints that no step has in common on every rank are an error that
    names them rather than a silent fresh start."""
    if resume == "never":
        return None
    rank, _ = rank_and_world()
    if resume != "auto":
        have = all_gather_objects((Path(resume) / "trainer_state.json").is_file())
        missing = [r for r, ok in enumerate(have) if not ok]
        if missing:
            raise CheckpointError(f"train.resume={resume}: no checkpoint there on rank(s) {missing}")
        return str(resume)
    held = all_gather_objects(sorted(complete_steps(out, rank)))
    common = set(held[0]).intersection(*held[1:])
    if common:
        return str(out / f"checkpoint-{max(common)}")
    if any(held):
        listing = "; ".join(f"rank {r}: {steps or 'none'}" for r, steps in enumerate(held))
        raise CheckpointError(
            f"{out}: no checkpoint is complete on every rank ({listing}). Copy the missing one to the node "
            "that lacks it, or start afresh with train.resume=never."
        )
    return None


def mark_complete(checkpoint_dir: Path) -> None:
    """This rank's last write to a checkpoint."""
    (Path(checkpoint_dir) / _marker(rank_and_world()[0])).touch()


# --- the Trainer side ------------------------------------------------------------------------------


class ShardedCheckpoints:
    """``transformers.Trainer`` mixin that applies the rules above.

    FSDP2: a checkpoint is one shard file per rank (plus the gathered adapter when training LoRA),
    the final model is gathered once and saved in ``save_dtype`` (the model's own dtype; FSDP
    trains float32 master weights). ZeRO-3: DeepSpeed's per-rank checkpoint, with its ``latest``
    tag on every node's disk; no whole-model gather at checkpoints of full fine-tuning. DDP and
    one process: the Trainer's own files. Every rank marks its part of a checkpoint complete."""

    save_dtype: torch.dtype | None = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.checkpoint_seconds: list[float] = []  # this rank's time in each checkpoint it wrote

    def _is_fsdp2(self) -> bool:
        return bool(self.is_fsdp_enabled and self.accelerator.state.fsdp_plugin.fsdp_version == 2)

    def _trains_adapter(self) -> bool:
        return hasattr(self.accelerator.unwrap_model(self.model), "peft_config")

    def save_model(self, output_dir=None, _internal_call: bool = False):
        output_dir = output_dir or self.args.output_dir
        if self._is_fsdp2():
            self._save_fsdp2_model(output_dir, checkpoint=_internal_call)
        elif not (_internal_call and self.is_deepspeed_enabled and not self._trains_adapter()):
            super().save_model(output_dir, _internal_call)

    def _save_fsdp2_model(self, output_dir: str, checkpoint: bool) -> None:
        adapter = self._trains_adapter()
        if checkpoint and not adapter:
            return  # full fine-tuning: the shard files are the checkpoint
        dtype = None if adapter else self.save_dtype
        weights = gather_weights(self.model_wrapped, trainable_only=adapter, dtype=dtype)
        if weights is not None:
            Path(output_dir).mkdir(parents=True, exist_ok=True)
            self.accelerator.unwrap_model(self.model).save_pretrained(output_dir, state_dict=weights)
            if self.processing_class is not None:
                self.processing_class.save_pretrained(output_dir)

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        if not self._is_fsdp2():
            super()._save_optimizer_and_scheduler(output_dir)
            if self.is_deepspeed_enabled and self.args.should_save:
                # DeepSpeed writes its `latest` tag on global rank 0 only; every node reads it to resume.
                tags = sorted(p.name for p in Path(output_dir).glob("global_step*") if p.is_dir())
                (Path(output_dir) / "latest").write_text(tags[-1])
            return
        save_shard(self.model_wrapped, self.optimizer, Path(output_dir))
        if self.args.should_save:
            torch.save(self.lr_scheduler.state_dict(), Path(output_dir) / SCHEDULER_NAME)

    def _save_checkpoint(self, model, trial) -> None:
        started = time.monotonic()
        super()._save_checkpoint(model, trial)
        mark_complete(Path(self._get_output_dir(trial)) / f"checkpoint-{self.state.global_step}")
        self.checkpoint_seconds.append(round(time.monotonic() - started, 3))

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        if not self._is_fsdp2():
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        load_shard_params(self.model_wrapped if model is None else model, Path(resume_from_checkpoint))

    def _load_optimizer_and_scheduler(self, checkpoint) -> None:
        if checkpoint is None or not self._is_fsdp2():
            return super()._load_optimizer_and_scheduler(checkpoint)
        load_shard_optimizer(self.optimizer, Path(checkpoint))
        self.lr_scheduler.load_state_dict(torch.load(Path(checkpoint) / SCHEDULER_NAME, weights_only=True))
