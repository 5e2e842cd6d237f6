"""Config -> objects, with nothing loaded: composing recipes, validating them, and the
``TrainingArguments`` and loss options a run is built from.

Everything here is cheap (``scripts/train.py --cfg job`` territory), so a bad setting fails
before any model or data is touched.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from aot.losses import LOSSES, PAIRED_ONLY, PENALTIES, SORTS
from aot.sorting import SINKHORN_MAX_N


class ConfigError(ValueError):
    """A config that cannot run, caught before anything is loaded."""


RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def compose(*overrides: str) -> DictConfig:
    """The run config exactly as scripts/train.py composes it (for tests and benchmarks)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(RECIPES), version_base="1.3"):
        cfg = hydra_compose(config_name="train", overrides=list(overrides))
    return with_default_output_dir(cfg, overrides)


#: Overrides that name the run's directory themselves, or do not change what it trains.
_NAMING = ("model", "loss", "data", "output_dir", "train.resume")


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def with_default_output_dir(cfg: DictConfig, overrides) -> DictConfig:
    """Unless ``output_dir`` was given, ``outputs/<model>-<loss>-<data>`` gets a short hash of
    the other overrides (``-3fa2c1``), so that ablations never share (and resume) a directory."""
    overrides = [str(o) for o in overrides]
    if any(_key(o) == "output_dir" for o in overrides):
        return cfg
    rest = sorted(o for o in overrides if _key(o) not in _NAMING and not _key(o).startswith("hydra."))
    if rest:
        import hashlib

        OmegaConf.set_struct(cfg, False)
        cfg.output_dir = f"{cfg.output_dir}-{hashlib.sha1(' '.join(rest).encode()).hexdigest()[:6]}"
        OmegaConf.set_struct(cfg, True)
    return cfg


DTYPES = ("float32", "bfloat16", "float16")


def check_config(cfg: DictConfig) -> None:
    """Every setting that cannot run, refused with the key and the valid values, before loading."""
    method = cfg.loss.name
    if method not in LOSSES:
        raise ConfigError(f"unknown loss {method!r}; valid: {', '.join(LOSSES)}")
    loss, t = cfg.loss, cfg.train
    if loss.penalty not in PENALTIES:
        raise ConfigError(f"loss.penalty={loss.penalty!r} is unknown; valid: {', '.join(PENALTIES)}")
    if loss.sort not in SORTS:
        raise ConfigError(f"loss.sort={loss.sort!r} is unknown; valid: {', '.join(SORTS)}")
    if not loss.beta > 0:
        raise ConfigError(f"loss.beta must be > 0, got {loss.beta}")
    if loss.sort_strength is not None and not loss.sort_strength > 0:
        raise ConfigError(
            f"loss.sort_strength must be > 0 (or null for the default), got {loss.sort_strength}"
        )
    if not 0 <= loss.label_smoothing < 0.5:
        raise ConfigError(f"loss.label_smoothing must be in [0, 0.5), got {loss.label_smoothing}")
    if loss.label_smoothing and method.startswith("aot") and loss.penalty != "logistic":
        raise ConfigError(
            f"loss.label_smoothing={loss.label_smoothing} applies to the logistic penalty only, "
            f"not loss.penalty={loss.penalty}"
        )
    if cfg.model.dtype not in DTYPES:
        raise ConfigError(f"model.dtype={cfg.model.dtype!r} is unknown; valid: {', '.join(DTYPES)}")
    if t.max_prompt_length >= t.max_length:
        raise ConfigError(
            f"train.max_prompt_length={t.max_prompt_length} must be below train.max_length={t.max_length} "
            "(prompts keep their last max_prompt_length tokens; completions get the rest)"
        )
    if not (isinstance(t.logps_chunk, int) and t.logps_chunk >= 0):
        raise ConfigError(
            f"train.logps_chunk must be a whole number of tokens >= 0 (0 = full-vocabulary logits), got {t.logps_chunk!r}"
        )
    if t.resume not in ("auto", "never") and not (Path(str(t.resume)) / "trainer_state.json").is_file():
        raise ConfigError(
            f"train.resume={t.resume!r}: no checkpoint there (no trainer_state.json); "
            "valid: auto, never, or a checkpoint-<step> directory"
        )
    if method.startswith("aot") and cfg.train.per_device_train_batch_size < 2:
        raise ConfigError(
            f"loss={method} with train.per_device_train_batch_size=1 sorts a single value per side, "
            "so AOT reduces to a per-pair loss; use a per-device batch of at least 2"
        )
    rows = cfg.loss.ot_batch_size or cfg.train.per_device_train_batch_size
    if method.startswith("aot") and loss.sort == "sinkhorn" and rows > SINKHORN_MAX_N:
        raise ConfigError(
            f"loss.sort=sinkhorn sorts {rows} values per device, above its limit of {SINKHORN_MAX_N} "
            "(O(n^2) per iteration, unrolled through autograd); use loss.sort=soft (PAV) or hard"
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
    """``train.bf16``: auto follows the launch config's ``mixed_precision`` when accelerate launched
    the run (``$ACCELERATE_MIXED_PRECISION``), else whether a CUDA GPU supports bf16. An explicit
    value that contradicts the launch config is refused: the run and the launcher must agree
    (DeepSpeed refuses the mismatch, FSDP would silently compute in another precision)."""
    bf16, launched = cfg.train.bf16, os.environ.get("ACCELERATE_MIXED_PRECISION")
    if bf16 == "auto":
        if launched is not None:
            return launched == "bf16"
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if launched is not None and launched in ("no", "bf16") and bool(bf16) != (launched == "bf16"):
        raise ConfigError(
            f"train.bf16={bf16} but the launch config has mixed_precision: {launched}; leave train.bf16=auto "
            "(it follows the launch config) or launch with --mixed_precision " + ("bf16" if bf16 else "no")
        )
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


def ot_batch_line(cfg, world_size: int) -> str:
    """How many rows' values are sorted together, e.g. 'OT batch: 512 = 8 per device x 2 ranks x 32'."""
    micro = cfg.train.per_device_train_batch_size
    passes = (cfg.loss.ot_batch_size or micro) // micro
    ranks = world_size if cfg.loss.ot_batch == "global" else 1
    line = f"OT batch: {micro * ranks * passes} = {micro} per device x {ranks} rank{'s' if ranks > 1 else ''} x {passes}"
    if cfg.loss.ot_batch == "local" and world_size > 1:
        line += f" (local: each of {world_size} ranks sorts its own)"
    return line + (" (two-pass step)" if passes > 1 else "")
