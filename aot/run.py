"""One training run from a composed config: check, build, measure, train, measure again, save.

``scripts/train.py`` (a Hydra app) calls ``train(cfg)``; each step below is a function of its own:

1. ``build_training_args``: every setting checked before anything loads (``aot.config``), then
   the ``TrainingArguments`` (``aot.arguments``);
2. ``_finished_run`` / ``_claim_output_dir``: what ``output_dir`` holds, decided on rank 0;
3. ``_load_data`` and ``aot.build.build_run``: data, model, tokeniser, trainer (one download per node);
4. once the Trainer has prepared the model: the reference sharded, what ran described, reference
   log-probs precomputed, the "before" diagnostics (``TrainerHooks.once_prepared``);
5. training, with preemption and resume (``aot.preemption``, ``aot.checkpoint``);
6. ``_finish``: the final model, the "after" diagnostics, ``metrics.json`` and the plot.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections import Counter
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from transformers import TrainingArguments

from aot.arguments import build_training_args
from aot.backends import (
    check_launch,
    describe,
    parameter_count,
    share_per_rank,
)
from aot.batches import tokenize_split
from aot.build import Run, build_run
from aot.checkpoint import agree_on_checkpoint, output_dir_is_shared, use_node_local_files
from aot.config import ConfigError, ot_batch_line, run_identity
from aot.data import Split, load_split
from aot.diagnostics import measure, plot_quantiles, summarise
from aot.distributed import all_gather_objects, decide_on_main
from aot.fixtures import FIXTURES
from aot.names import check_rows
from aot.packing import KERNEL_CALLS
from aot.preemption import StopOnSignal
from aot.rundir import check_run_dir

log = logging.getLogger("aot")


# --- the steps of train() -------------------------------------------------------------------------------


def _finished_run(cfg: DictConfig, out: Path) -> dict | None:
    """This config's finished metrics if ``out`` holds them; refuses another config's directory.
    Decided on rank 0 and broadcast: other nodes may not see its disk."""
    identity = run_identity(cfg)
    state = lambda: check_run_dir(out, identity, str(cfg.train.resume))  # noqa: E731
    return decide_on_main(
        lambda: json.loads((out / "metrics.json").read_text()) if state() == "finished" else None
    )


def _claim_output_dir(cfg: DictConfig, args: TrainingArguments, out: Path) -> bool:
    """Write ``run.json`` (rank 0) and say whether every rank shares ``out``'s disk."""
    shared = output_dir_is_shared(out)
    if args.world_size > 1:
        where = (
            "one disk for every rank"
            if shared
            else "node-local (not shared): each node keeps its own copy of the checkpoints"
        )
        log.info("output_dir %s: %s", out, where)
    if args.process_index == 0:
        (out / "run.json").write_text(json.dumps(run_identity(cfg), indent=2, default=str) + "\n")
    return shared


def _load_data(cfg: DictConfig, args: TrainingArguments) -> tuple[Split, Split]:
    with args.main_process_first(desc="data files"):  # one download per node; the others read its cache
        splits = load_split(cfg.data, "train"), load_split(cfg.data, "test")
    try:  # local files say only now whether their rows are paired
        check_rows(cfg.loss.name, splits[0].kind, splits[0].source)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    for split in splits:
        log.info("data %s", split.summary())
    return splits


def _tokenize_test(cfg: DictConfig, run: Run, test_split: Split) -> tuple[list[dict], dict]:
    """The test rows' token ids, and how many of their prompts and completions were cut."""
    train = cfg.train
    features, truncated = tokenize_split(test_split, run.tokenizer, train.max_length, train.max_prompt_length)
    for name, counts in (("train", run.truncated), ("test", truncated)):
        if any(counts.values()):
            log.warning(
                "%s: truncated %s (train.max_length=%d, train.max_prompt_length=%d)",
                name,
                counts,
                train.max_length,
                train.max_prompt_length,
            )
    return features, truncated


def _measure_before(trainer, out: Path, resumed: bool, measure_split) -> dict:
    """Diagnostics of the starting policy and the reference, kept in ``out`` so that a resumed
    run reports the start of the run, not the checkpoint it resumed from."""
    saved = out / "eval_before.pt"
    kept = decide_on_main(lambda: torch.load(saved) if resumed and saved.is_file() else None)
    if kept is not None:  # read on rank 0 (other nodes may not share its disk), given to every rank
        log.info("diagnostics before training: from %s", saved)
        return kept
    measured = measure_split()
    if resumed:
        log.warning("no %s: 'before' diagnostics are measured at the resumed checkpoint", saved)
    elif trainer.accelerator.is_main_process:
        torch.save(measured, saved)
    return measured


@contextlib.contextmanager
def _log_file(path: Path, main: bool):
    """The ``aot`` log of this run, also appended to ``path`` (the main process's)."""
    handler = None
    if main:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path)
        handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
        log.addHandler(handler)
    try:
        yield
    finally:
        if handler is not None:
            log.removeHandler(handler)
            handler.close()


def train(cfg: DictConfig) -> dict:
    """Run one training job; returns what it wrote to metrics.json (its log: <output_dir>/train.log)."""
    started = time.time()
    check_launch()
    args = build_training_args(cfg)  # checks the config before anything is loaded
    out = Path(cfg.output_dir)
    if args.process_index != 0:  # only the main process writes outputs and logs progress
        log.setLevel(logging.WARNING)
    finished = _finished_run(cfg, out)
    if finished is not None:
        log.info("%s already holds this config's finished run (metrics.json): nothing to train", out)
        return finished
    shared = _claim_output_dir(cfg, args, out)
    with _log_file(out / "train.log", args.process_index == 0):
        return _build_and_fit(cfg, args, out, shared, started)


def _build_and_fit(cfg: DictConfig, args: TrainingArguments, out: Path, shared: bool, started: float) -> dict:
    """Steps 3 to 6 in the claimed output_dir, logged to its train.log."""
    train_split, test_split = _load_data(cfg, args)
    run = build_run(cfg, args, train_split)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    if cfg.model.name_or_path in FIXTURES:  # a fixture: the directory it was built in
        resolved["model"]["name_or_path"] = run.path
    if args.process_index == 0:
        (out / "config.yaml").write_text(OmegaConf.to_yaml(resolved))
    test_features, test_truncated = _tokenize_test(cfg, run, test_split)
    collator = run.collator()
    trainer = run.trainer

    def measure_split(reference=True):
        return measure(trainer, test_features, collator, cfg.train.per_device_eval_batch_size, reference)

    if cfg.loss.name.startswith("aot"):
        log.info(ot_batch_line(cfg, args.world_size))
    use_node_local_files(trainer, shared)
    resume = agree_on_checkpoint(out, str(cfg.train.resume))
    if resume:
        log.info("resuming from %s", resume)
    total_params, what_ran = parameter_count(run.policy), {}

    def describe_run():
        what_ran.update(describe(trainer, total_params))
        log.info(what_ran["line"])

    # Measured, not assumed equal to the reference: a policy that does not start as its
    # reference (a LoRA initialisation or loading bug) shows up here.
    trainer.once_prepared.append(("describe what ran", describe_run))
    trainer.once_prepared.append(
        (
            "diagnostics before training",
            lambda: what_ran.update(before=_measure_before(trainer, out, resume is not None, measure_split)),
        )
    )
    trainer.once_prepared.append(  # the last hook: the first training step follows (docs/training.md)
        (
            "start-up time",
            lambda: log.info(
                "start-up: %.2f s from train() to the first training step", time.time() - started
            ),
        )
    )
    stopper = StopOnSignal()
    trainer.add_callback(stopper)
    calls = Counter(KERNEL_CALLS)
    result = trainer.train(resume_from_checkpoint=resume)
    what_ran["layout"] = {**run.layout, "packed_attention_calls": dict(KERNEL_CALLS - calls)}
    if stopper.stopped_at is not None and trainer.state.global_step < trainer.state.max_steps:
        log.info(
            "stopped on request at step %d with a checkpoint in %s; run the same command to resume",
            stopper.stopped_at,
            out,
        )
        return {"stopped_at": stopper.stopped_at}
    splits = {"train": (train_split, run.truncated), "test": (test_split, test_truncated)}
    return _finish(cfg, run, out, result, what_ran, splits, measure_split(reference=False)["policy"], started)


def _finish(
    cfg, run: Run, out: Path, result, what_ran: dict, splits: dict, after: dict, started: float
) -> dict:
    """The final model, metrics.json (with the "after" diagnostics) and the quantile plot."""
    trainer, main = run.trainer, run.trainer.args.process_index == 0
    if getattr(trainer, "ref_model", None) is not None:  # after its last forward: still sharded?
        what_ran["reference_params_per_rank"] = share_per_rank(trainer.ref_model)
    checkpoint_seconds = all_gather_objects(trainer.checkpoint_seconds)
    trainer.save_model(str(out))
    if main:
        run.tokenizer.save_pretrained(str(out))
    before, ref_logps = what_ran["before"]["policy"], what_ran["before"]["reference"]
    paired = splits["test"][0].kind == "paired"
    summary_args = dict(paired=paired, beta=cfg.loss.beta, penalty=cfg.loss.penalty)
    data = {
        name: {"rows": len(split.rows), "kind": split.kind, "skipped": split.skipped, **truncated}
        for name, (split, truncated) in splits.items()
    }
    metrics = {
        "method": cfg.loss.name,
        "distributed": {k: v for k, v in what_ran.items() if k not in ("line", "before", "layout")},
        "layout": what_ran["layout"],
        "train": dict(result.metrics),
        "log_history": trainer.state.log_history,
        "eval_before": summarise(before, ref_logps, **summary_args),
        "eval_after": summarise(after, ref_logps, **summary_args),
        "data": data,
        "checkpoint_seconds_per_rank": checkpoint_seconds,
        "wall_seconds": round(time.time() - started, 1),
    }
    if main:
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        title = f"{cfg.model.id} / {cfg.loss.name} / {cfg.data.name}"
        plot_quantiles(out / "quantiles.png", ref_logps, before, after, paired, title)
        _print_summary(out, metrics)
    return metrics


def _print_summary(out: Path, metrics: dict) -> None:
    b, a = metrics["eval_before"], metrics["eval_after"]
    print(
        f"\nRun saved to {out}/ (config.yaml, metrics.json, quantiles.png, adapter/model + tokenizer)\n"
        f"  eval reward accuracy : {b['reward_accuracy']:.3f} -> {a['reward_accuracy']:.3f}\n"
        f"  eval FSD violation   : {b['fsd_violation']:.3f} -> {a['fsd_violation']:.3f}\n"
        f"  eval AOT violation   : {b['aot_violation']:.4f} -> {a['aot_violation']:.4f}\n"
        f"  wall time            : {metrics['wall_seconds']:.0f} s"
    )
