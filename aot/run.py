"""One training run from a composed config: build, measure, train, measure again, save.

``scripts/train.py`` (a Hydra app) calls ``train(cfg)``; config handling (composing,
validation, ``TrainingArguments``) is in ``aot.config``, sharding and the distributed backends in
``aot.distributed``, preemption/resume/precompute in ``aot.runtime``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from aot.checkpoint import agree_on_checkpoint, output_dir_is_shared, use_node_local_files
from aot.config import (  # noqa: F401 (compose, build_training_args re-exported for tests and benchmarks)
    ConfigError,
    build_training_args,
    compose,
    loss_kwargs,
    ot_batch_line,
)
from aot.data import load_split, unpair
from aot.distributed import all_gather_objects, decide_on_main
from aot.losses import PAIRED_ONLY
from aot.runtime import StopOnSignal, attach_ref_logps, check_run_dir, run_identity

log = logging.getLogger("aot")


# --- loading -------------------------------------------------------------------------------------


#: What a causal LM and its tokenizer load from a hub repository (weights as safetensors; the
#: older ``*.bin`` only when a repository has no safetensors).
MODEL_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]


def model_path(cfg: DictConfig, download: bool = True) -> str:
    """The local directory to load: the two offline fixtures by name, a directory as given, or a
    hub repository's snapshot in the Hugging Face cache, fetched when ``download`` (the first
    process of each node, ``main_process_first``) or found there (every other process)."""
    name = cfg.model.name_or_path
    if name == "tiny":
        from aot.tiny import build_tiny

        return str(build_tiny())
    if name == "smollm2":
        from aot.smollm2 import ensure_smollm2

        return str(ensure_smollm2())
    if Path(name).is_dir():
        return name
    from huggingface_hub import snapshot_download

    fetch = dict(revision=cfg.model.get("revision"), local_files_only=not download)
    path = snapshot_download(name, allow_patterns=MODEL_FILES, **fetch)
    if not any(Path(path).glob("*.safetensors")):
        path = snapshot_download(name, allow_patterns=[*MODEL_FILES, "*.bin"], **fetch)
    return path


def load_tokenizer(cfg: DictConfig, path: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, revision=cfg.model.get("revision"))
    if cfg.model.chat_template and not tok.chat_template:  # the recipe's is a fallback only
        tok.chat_template = cfg.model.chat_template
    if tok.chat_template is None:
        raise ConfigError(
            f"{path} has no chat template; set model.chat_template in recipes/model/{cfg.model.id}.yaml"
        )
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_models(cfg: DictConfig, path: str):
    """The policy (LoRA-wrapped unless model.lora=false) and the frozen reference (None with LoRA)."""
    from transformers import AutoModelForCausalLM, set_seed

    set_seed(cfg.seed)  # LoRA's initialisation draws from the RNG: seed it before, not in the Trainer
    kwargs = dict(
        dtype=getattr(torch, cfg.model.dtype),
        attn_implementation=cfg.model.attn_implementation,
        revision=cfg.model.get("revision"),
    )

    def load():
        return AutoModelForCausalLM.from_pretrained(path, **kwargs)

    policy = load()
    if cfg.train.disable_dropout:
        for module in policy.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
    if not cfg.model.lora:
        reference = load().eval().requires_grad_(False)
        return policy, reference
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=cfg.model.lora_r,
        lora_alpha=cfg.model.lora_alpha,
        lora_dropout=cfg.model.lora_dropout,
        target_modules=list(cfg.model.lora_target_modules),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(policy, lora), None


# --- the run -------------------------------------------------------------------------------------


@dataclass
class Prepared:
    """Everything a run trains with: the resolved model path, tokenizer, policy, reference,
    tokenised train rows (with their truncation counts) and the trainer."""

    path: str
    tokenizer: object
    policy: object
    reference: object
    features: list[dict]
    truncated: dict
    trainer: object


def prepare(cfg: DictConfig, args, train_split) -> Prepared:
    """Load the model, tokenise the train split, build the trainer. With train.precompute_ref the
    reference log-probs are attached once the trainer has prepared the model (every rank)."""
    from aot.distributed import steer_cpu_sharding
    from aot.trainer import AfterPreparation, PreferenceCollator, tokenize_split

    steer_cpu_sharding(args)
    with args.main_process_first(desc="model files"):  # one download (or fixture build) per node
        path = model_path(cfg, download=args.local_process_index == 0)
    tokenizer = load_tokenizer(cfg, path)
    policy, reference = load_models(cfg, path)
    t = cfg.train
    features, truncated = tokenize_split(train_split, tokenizer, t.max_length, t.max_prompt_length)
    trainer = make_trainer(cfg, args, policy, reference, tokenizer, train_split, features)
    if t.precompute_ref:
        collator = PreferenceCollator(tokenizer.pad_token_id)
        trainer.add_callback(
            AfterPreparation(lambda: attach_ref_logps(cfg, path, trainer, features, collator))
        )
    return Prepared(path, tokenizer, policy, reference, features, truncated, trainer)


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


def train(cfg: DictConfig) -> dict:
    """Run one training job; returns what it wrote to metrics.json."""
    from aot.diagnostics import measure, plot_quantiles, summarise
    from aot.distributed import check_launch, describe, parameter_count, share_per_rank
    from aot.trainer import AfterPreparation, PreferenceCollator, tokenize_split

    started = time.time()
    check_launch()
    args = build_training_args(cfg)  # validates the config before anything is loaded
    out = Path(cfg.output_dir)
    method = cfg.loss.name
    main = args.process_index == 0  # only the main process writes outputs and logs progress
    if not main:
        log.setLevel(logging.WARNING)
    identity = run_identity(cfg)
    # Decided on rank 0 and broadcast: other nodes may not see its disk.
    finished = decide_on_main(
        lambda: (
            json.loads((out / "metrics.json").read_text())
            if check_run_dir(out, identity, str(cfg.train.resume)) == "finished"
            else None
        )
    )
    if finished is not None:
        log.info("%s already holds this config's finished run (metrics.json): nothing to train", out)
        return finished
    shared = output_dir_is_shared(out)
    if args.world_size > 1:
        log.info(
            "output_dir %s: %s",
            out,
            "one disk for every rank"
            if shared
            else "node-local (not shared): each node keeps its own copy of the checkpoints",
        )
    if main:
        (out / "run.json").write_text(json.dumps(identity, indent=2, default=str) + "\n")

    with args.main_process_first(desc="data files"):  # one download per node; the others read its cache
        train_split, test_split = load_split(cfg.data, "train"), load_split(cfg.data, "test")
    if method in PAIRED_ONLY and train_split.kind != "paired":
        raise ConfigError(f"loss={method} needs paired rows; {train_split.source} is unpaired")
    for split in (train_split, test_split):
        log.info("data %s", split.summary())

    run = prepare(cfg, args, train_split)
    tokenizer, trainer = run.tokenizer, run.trainer
    resolved = OmegaConf.to_container(cfg, resolve=True)
    if cfg.model.name_or_path in ("tiny", "smollm2"):  # fixtures: the directory they were built in
        resolved["model"]["name_or_path"] = run.path
    if main:
        (out / "config.yaml").write_text(OmegaConf.to_yaml(resolved))

    t = cfg.train
    train_trunc = run.truncated
    test_features, test_trunc = tokenize_split(test_split, tokenizer, t.max_length, t.max_prompt_length)
    for name, counts in (("train", train_trunc), ("test", test_trunc)):
        if any(counts.values()):
            log.warning(
                "%s: truncated %s (train.max_length=%d, train.max_prompt_length=%d)",
                name,
                counts,
                t.max_length,
                t.max_prompt_length,
            )
    collator = PreferenceCollator(tokenizer.pad_token_id)

    def measure_split(reference=True):
        return measure(trainer, test_features, collator, t.per_device_eval_batch_size, reference)

    if method.startswith("aot"):
        log.info(ot_batch_line(cfg, args.world_size))
    use_node_local_files(trainer, shared)
    resume = agree_on_checkpoint(out, str(t.resume))
    if resume:
        log.info("resuming from %s", resume)
    total_params = parameter_count(run.policy)
    seen = {}

    def on_prepared():
        # Runs on every rank once the Trainer has wrapped/sharded the model: what ran, then
        # "before" diagnostics (measured, not assumed equal to the reference: a policy that does
        # not start as its reference, from a LoRA init or loading bug, shows up here).
        seen["distributed"] = describe(trainer, total_params)
        log.info(seen["distributed"]["line"])
        seen["before"] = _measure_before(trainer, out, resume is not None, measure_split)

    trainer.add_callback(AfterPreparation(on_prepared))
    stopper = StopOnSignal()
    trainer.add_callback(stopper)
    result = trainer.train(resume_from_checkpoint=resume)
    if stopper.stopped_at is not None and trainer.state.global_step < trainer.state.max_steps:
        log.info(
            "stopped on request at step %d with a checkpoint in %s; run the same command to resume",
            stopper.stopped_at,
            out,
        )
        return {"stopped_at": stopper.stopped_at}
    if getattr(trainer, "ref_model", None) is not None:  # after its last forward: still sharded?
        seen["distributed"]["reference_params_per_rank"] = share_per_rank(trainer.ref_model)
    checkpoint_seconds = all_gather_objects(trainer.checkpoint_seconds)
    trainer.save_model(str(out))
    if main:
        tokenizer.save_pretrained(str(out))

    before, ref_logps = seen["before"]["policy"], seen["before"]["reference"]
    after = measure_split(reference=False)["policy"]
    paired = test_split.kind == "paired"
    summary_args = dict(paired=paired, beta=cfg.loss.beta, penalty=cfg.loss.penalty)
    metrics = {
        "method": method,
        "distributed": {k: v for k, v in seen["distributed"].items() if k != "line"},
        "train": dict(result.metrics),
        "log_history": trainer.state.log_history,
        "eval_before": summarise(before, ref_logps, **summary_args),
        "eval_after": summarise(after, ref_logps, **summary_args),
        "data": {
            "train": {
                "rows": len(train_split.rows),
                "kind": train_split.kind,
                "skipped": train_split.skipped,
                **train_trunc,
            },
            "test": {
                "rows": len(test_split.rows),
                "kind": test_split.kind,
                "skipped": test_split.skipped,
                **test_trunc,
            },
        },
        "checkpoint_seconds_per_rank": checkpoint_seconds,
        "wall_seconds": round(time.time() - started, 1),
    }
    if main:
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        plot_quantiles(
            out / "quantiles.png",
            ref_logps,
            before,
            after,
            paired,
            f"{cfg.model.id} / {method} / {cfg.data.name}",
        )
        _print_summary(out, metrics)
    return metrics


def make_trainer(cfg, args, policy, reference, tokenizer, train_split, train_features):
    """Our ``PreferenceTrainer``, or TRL's ``KTOTrainer`` for kto (on unpaired rows)."""
    from aot.distributed import one_device_per_process, place_before_sharding, set_fsdp2_precision
    from aot.trainer import PreferenceCollator, PreferenceTrainer

    one_device_per_process(args)
    policy = place_before_sharding(policy, args.device)
    if cfg.loss.name != "kto":
        trainer = PreferenceTrainer(
            model=policy,
            args=args,
            train_dataset=train_features,
            data_collator=PreferenceCollator(
                tokenizer.pad_token_id,
                cfg.train.per_device_train_batch_size if cfg.loss.ot_batch_size else None,
            ),
            processing_class=tokenizer,
            method=cfg.loss.name,
            loss_kwargs=loss_kwargs(cfg),
            ref_model=reference,
            logps_chunk=cfg.train.logps_chunk,
        )
    else:
        import datasets
        import trl

        from aot.checkpoint import ShardedCheckpoints

        class KTOTrainer(ShardedCheckpoints, trl.KTOTrainer):
            """TRL's KTO with this repo's checkpoints."""

        rows = [
            {"prompt": r["prompt"], "completion": r["completion"], "label": r["label"]}
            for r in unpair(train_split).rows
        ]
        trainer = KTOTrainer(
            model=policy,
            ref_model=reference,
            args=args,
            train_dataset=datasets.Dataset.from_list(rows),
            processing_class=tokenizer,
        )
    trainer.save_dtype = getattr(torch, cfg.model.dtype)
    set_fsdp2_precision(trainer)
    return trainer


def _print_summary(out: Path, metrics: dict) -> None:
    b, a = metrics["eval_before"], metrics["eval_after"]
    print(
        f"\nRun saved to {out}/ (config.yaml, metrics.json, quantiles.png, adapter/model + tokenizer)\n"
        f"  eval reward accuracy : {b['reward_accuracy']:.3f} -> {a['reward_accuracy']:.3f}\n"
        f"  eval FSD violation   : {b['fsd_violation']:.3f} -> {a['fsd_violation']:.3f}\n"
        f"  eval AOT violation   : {b['aot_violation']:.4f} -> {a['aot_violation']:.4f}\n"
        f"  wall time            : {metrics['wall_seconds']:.0f} s"
    )
