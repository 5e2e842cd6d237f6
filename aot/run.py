"""One training run from a composed config: build, measure, train, measure again, save.

``scripts/train.py`` (a Hydra app) calls ``train(cfg)``; tests call ``build_training_args``
to check that every recipe combination yields a valid trainer config without loading anything.
"""

from __future__ import annotations

import inspect
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from aot.data import load_split, unpair
from aot.losses import LOSSES, PAIRED_ONLY
from aot.runtime import StopOnSignal, attach_ref_logps, find_checkpoint

log = logging.getLogger("aot")


class ConfigError(ValueError):
    """A config that cannot run, caught before anything is loaded."""


# --- config -> objects (nothing loaded) --------------------------------------------------------

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def compose(*overrides: str) -> DictConfig:
    """The run config exactly as scripts/train.py composes it (for tests and benchmarks)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(RECIPES), version_base="1.3"):
        return hydra_compose(config_name="train", overrides=list(overrides))


def check_config(cfg: DictConfig) -> None:
    method = cfg.loss.name
    if method not in LOSSES:
        raise ConfigError(f"unknown loss {method!r}; valid: {', '.join(LOSSES)}")
    if method.startswith("aot") and cfg.train.per_device_train_batch_size < 2:
        raise ConfigError(
            f"loss={method} with train.per_device_train_batch_size=1 sorts a single value per side, "
            "so AOT reduces to a per-pair loss; use a per-device batch of at least 2"
        )
    if cfg.loss.ot_batch not in ("global", "local"):
        raise ConfigError(f"loss.ot_batch must be global or local, got {cfg.loss.ot_batch!r}")
    size, micro = cfg.loss.ot_batch_size, cfg.train.per_device_train_batch_size
    if size is not None and (method == "kto" or size < micro or size % micro):
        raise ConfigError(
            f"loss.ot_batch_size={size} must be a multiple of train.per_device_train_batch_size={micro}"
            + (" and is not available for kto" if method == "kto" else "")
        )
    if method == "kto" and cfg.train.precompute_ref:
        raise ConfigError(
            "train.precompute_ref is for our trainer; kto runs on TRL's KTOTrainer (not supported)"
        )
    if method in PAIRED_ONLY and cfg.data.source == "sample" and cfg.data.view == "unpaired":
        raise ConfigError(
            f"loss={method} needs paired rows; data.view=unpaired has none (use aot_unpaired or kto)"
        )
    if method in PAIRED_ONLY and cfg.data.source in ("helpsteer", "beavertails"):
        raise ConfigError(
            f"loss={method} needs paired rows; data={cfg.data.name} is unpaired (use aot_unpaired or kto)"
        )


def use_bf16(cfg: DictConfig) -> bool:
    bf16 = cfg.train.bf16
    if bf16 == "auto":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return bool(bf16)


def build_training_args(cfg: DictConfig, output_dir: str | None = None):
    """``TrainingArguments`` (``KTOConfig`` for kto) from the ``train`` and ``loss`` sections."""
    from transformers import TrainingArguments

    check_config(cfg)
    t = cfg.train
    common = dict(
        output_dir=output_dir or cfg.output_dir,
        seed=cfg.seed,
        max_steps=t.max_steps,
        num_train_epochs=t.num_train_epochs,
        # Two-pass: the dataloader yields ot_batch_size rows, split into micro-batches by the collator.
        per_device_train_batch_size=cfg.loss.ot_batch_size or t.per_device_train_batch_size,
        per_device_eval_batch_size=t.per_device_eval_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        optim=t.optim,
        lr_scheduler_type=t.lr_scheduler_type,
        warmup_steps=t.warmup_steps,
        weight_decay=t.weight_decay,
        logging_steps=t.logging_steps,
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        bf16=use_bf16(cfg),
        activation_checkpointing=t.gradient_checkpointing,
        report_to=[] if t.report_to in (None, "none") else t.report_to,
        use_cpu=not torch.cuda.is_available(),
        remove_unused_columns=False,
        disable_tqdm=False,
    )
    if cfg.loss.name == "kto":
        from trl import KTOConfig

        return KTOConfig(
            **common,
            beta=cfg.loss.beta,
            desirable_weight=cfg.loss.desirable_weight,
            undesirable_weight=cfg.loss.undesirable_weight,
            max_length=t.max_length,
            disable_dropout=t.disable_dropout,
        )
    return TrainingArguments(**common)


def loss_kwargs(cfg: DictConfig) -> dict:
    """The loss section's values that the method's loss function takes (kto: none of ours)."""
    from aot.losses import aot_loss

    fn = aot_loss if cfg.loss.name.startswith("aot") else LOSSES[cfg.loss.name]
    if fn is None:
        return {}
    params = inspect.signature(fn).parameters
    kwargs = {k: v for k, v in OmegaConf.to_container(cfg.loss).items() if k in params}
    if "gather" in params:
        kwargs["gather"] = cfg.loss.ot_batch == "global"
    return kwargs


# --- loading -------------------------------------------------------------------------------------


def model_path(cfg: DictConfig) -> str:
    if cfg.model.name_or_path == "tiny":
        from aot.tiny import build_tiny

        return str(build_tiny())
    return cfg.model.name_or_path


def load_tokenizer(cfg: DictConfig, path: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    if cfg.model.chat_template:
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
    kwargs = dict(dtype=getattr(torch, cfg.model.dtype), attn_implementation=cfg.model.attn_implementation)
    policy = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if cfg.train.disable_dropout:
        for module in policy.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
    if not cfg.model.lora:
        reference = AutoModelForCausalLM.from_pretrained(path, **kwargs).eval().requires_grad_(False)
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
    """Load the model, tokenise the train split, build the trainer (and attach precomputed
    reference log-probs when train.precompute_ref is set)."""
    from aot.trainer import PreferenceCollator, tokenize_split

    with args.main_process_first(desc="model files"):  # the tiny model is built once, by rank 0
        path = model_path(cfg)
    tokenizer = load_tokenizer(cfg, path)
    policy, reference = load_models(cfg, path)
    t = cfg.train
    features, truncated = tokenize_split(train_split, tokenizer, t.max_length, t.max_prompt_length)
    trainer = make_trainer(cfg, args, policy, reference, tokenizer, train_split, features)
    if t.precompute_ref:
        attach_ref_logps(
            cfg, path, policy, reference, features, PreferenceCollator(tokenizer.pad_token_id), args
        )
    return Prepared(path, tokenizer, policy, reference, features, truncated, trainer)


def _diagnose(model, reference_ctx, features, collator, batch_size, ref_logps=None):
    from aot.diagnostics import split_logps

    device = next(model.parameters()).device
    policy = split_logps(model, features, collator, batch_size, device)
    if ref_logps is None:
        with reference_ctx() as ref:
            ref_logps = split_logps(ref, features, collator, batch_size, device)
    return policy, ref_logps


def train(cfg: DictConfig) -> dict:
    """Run one training job; returns what it wrote to metrics.json."""
    from aot.diagnostics import plot_quantiles, summarise
    from aot.trainer import PreferenceCollator, reference_of, tokenize_split

    started = time.time()
    args = build_training_args(cfg)  # validates the config before anything is loaded
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    method = cfg.loss.name
    main = args.process_index == 0  # only the main process writes outputs and logs progress
    if not main:
        log.setLevel(logging.WARNING)

    train_split, test_split = load_split(cfg.data, "train"), load_split(cfg.data, "test")
    if method in PAIRED_ONLY and train_split.kind != "paired":
        raise ConfigError(f"loss={method} needs paired rows; {train_split.source} is unpaired")
    for split in (train_split, test_split):
        log.info("data %s", split.summary())

    run = prepare(cfg, args, train_split)
    path, tokenizer, policy, reference, trainer = (
        run.path,
        run.tokenizer,
        run.policy,
        run.reference,
        run.trainer,
    )
    resolved = OmegaConf.to_container(cfg, resolve=True)
    resolved["model"]["name_or_path"] = path
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

    def reference_ctx():
        return reference_of(policy, reference)

    # "Before" is measured, not assumed equal to the reference: a policy that does not start as
    # its reference (a LoRA init or loading bug) shows up here.
    before, ref_logps = _diagnose(
        policy, reference_ctx, test_features, collator, t.per_device_eval_batch_size
    )

    if method.startswith("aot"):
        log.info(ot_batch_line(cfg, args.world_size))
    resume = find_checkpoint(out) if t.resume == "auto" else (None if t.resume == "never" else t.resume)
    if resume:
        log.info("resuming from %s", resume)
    stopper = StopOnSignal()
    trainer.add_callback(stopper)
    result = trainer.train(resume_from_checkpoint=resume)
    if stopper.stopped_at is not None:
        log.info(
            "stopped by signal at step %d with a checkpoint in %s; run the same command to resume",
            stopper.stopped_at,
            out,
        )
        return {"stopped_at": stopper.stopped_at}
    trainer.save_model(str(out))
    if main:
        tokenizer.save_pretrained(str(out))

    after, _ = _diagnose(
        policy, reference_ctx, test_features, collator, t.per_device_eval_batch_size, ref_logps
    )
    paired = test_split.kind == "paired"
    summary_args = dict(paired=paired, beta=cfg.loss.beta, penalty=cfg.loss.penalty)
    metrics = {
        "method": method,
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
    from aot.trainer import PreferenceCollator, PreferenceTrainer

    if cfg.loss.name != "kto":
        return PreferenceTrainer(
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
        )
    import datasets
    from trl import KTOTrainer

    rows = [
        {"prompt": r["prompt"], "completion": r["completion"], "label": r["label"]}
        for r in unpair(train_split).rows
    ]
    return KTOTrainer(
        model=policy,
        ref_model=reference,
        args=args,
        train_dataset=datasets.Dataset.from_list(rows),
        processing_class=tokenizer,
    )


def ot_batch_line(cfg, world_size: int) -> str:
    """How many rows' values are sorted together, e.g. 'OT batch: 512 = 8 per device x 2 ranks x 32'."""
    micro = cfg.train.per_device_train_batch_size
    passes = (cfg.loss.ot_batch_size or micro) // micro
    ranks = world_size if cfg.loss.ot_batch == "global" else 1
    line = f"OT batch: {micro * ranks * passes} = {micro} per device x {ranks} rank{'s' if ranks > 1 else ''} x {passes}"
    if cfg.loss.ot_batch == "local" and world_size > 1:
        line += f" (local: each of {world_size} ranks sorts its own)"
    return line + (" (two-pass step)" if passes > 1 else "")


def _print_summary(out: Path, metrics: dict) -> None:
    b, a = metrics["eval_before"], metrics["eval_after"]
    print(
        f"\nRun saved to {out}/ (config.yaml, metrics.json, quantiles.png, adapter/model + tokenizer)\n"
        f"  eval reward accuracy : {b['reward_accuracy']:.3f} -> {a['reward_accuracy']:.3f}\n"
        f"  eval FSD violation   : {b['fsd_violation']:.3f} -> {a['fsd_violation']:.3f}\n"
        f"  eval AOT violation   : {b['aot_violation']:.4f} -> {a['aot_violation']:.4f}\n"
        f"  wall time            : {metrics['wall_seconds']:.0f} s"
    )
