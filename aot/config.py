"""Config -> objects, with nothing loaded: composing recipes, checking them, and the
``TrainingArguments``, loss options and identity a run is built from.

Everything here is cheap (``scripts/train.py --cfg job`` territory), so a bad setting fails
before any model or data is touched. The recipes are package data (``aot.recipes``, the
checkout's ``recipes/``).
"""

from __future__ import annotations

import inspect
import json
import os
from importlib.resources import files
from pathlib import Path

import torch
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from omegaconf import DictConfig, OmegaConf
from transformers import TrainingArguments

from aot.data import declared_kind
from aot.files import short_hash
from aot.losses import aot_loss, check_options
from aot.methods import METHODS, check_rows
from aot.sorting import SINKHORN_MAX_N


class ConfigError(ValueError):
    """A config that cannot run, caught before anything is loaded."""


RECIPES = Path(str(files("aot.recipes")))
DTYPES = ("float32", "bfloat16", "float16")


# --- composing ------------------------------------------------------------------------------------


def compose(*overrides: str) -> DictConfig:
    """The run config exactly as scripts/train.py composes it (for tests, benchmarks, evaluation)."""
    with initialize_config_dir(config_dir=str(RECIPES), version_base="1.3"):
        cfg = hydra_compose(config_name="train", overrides=list(overrides))
    return with_default_output_dir(cfg, overrides)


#: Overrides that name the run's directory themselves, or do not change what it trains.
_NAMING = ("model", "loss", "data", "output_dir", "train.resume")


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def with_default_output_dir(cfg: DictConfig, overrides) -> DictConfig:
    """Unless ``output_dir`` was given, ``outputs/<model>-<loss>-<data>`` gets a short hash of
    the other overrides (``-3fa2c1``), so that ablations never share (and resume) a directory."""
    overrides = [str(o) for o in overrides]
    if any(_override_key(o) == "output_dir" for o in overrides):
        return cfg
    rest = sorted(
        o for o in overrides if _override_key(o) not in _NAMING and not _override_key(o).startswith("hydra.")
    )
    if rest:
        OmegaConf.set_struct(cfg, False)
        cfg.output_dir = f"{cfg.output_dir}-{short_hash(' '.join(rest), 6)}"
        OmegaConf.set_struct(cfg, True)
    return cfg


# --- identity -----------------------------------------------------------------------------------------

#: Keys that do not change what a run trains: where it is written, how it was started, and how
#: log-probs are chunked (equal to float tolerance either way: tests/unit/test_logps.py). The
#: results table (evaluation.results) also merges runs that differ only in ``seed``.
IDENTITY_IGNORED = ("output_dir", "train.resume", "train.logps_chunk")


def flatten(node: dict, prefix: str = "") -> dict:
    """A nested config as flat dotted keys: {"loss": {"beta": 0.1}} -> {"loss.beta": 0.1}."""
    flat = {}
    for key, value in node.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def run_identity(cfg) -> dict:
    """The composed config as flat keys, minus ``IDENTITY_IGNORED``, and their hash."""
    config = {
        k: v
        for k, v in flatten(OmegaConf.to_container(cfg, resolve=True)).items()
        if k not in IDENTITY_IGNORED
    }
    return {"config_hash": short_hash(json.dumps(config, sort_keys=True, default=str)), "config": config}


# --- checks ---------------------------------------------------------------------------------------------


def check_config(cfg: DictConfig) -> None:
    """Every setting that cannot run, refused with the key and the valid values, before loading."""
    for check in (_check_loss, _check_model, _check_train, _check_ot_batch, _check_rows):
        check(cfg)


def _check_loss(cfg: DictConfig) -> None:
    loss = cfg.loss
    if loss.name not in METHODS:
        raise ConfigError(f"unknown loss {loss.name!r}; valid: {', '.join(METHODS)}")
    aot = loss.name.startswith("aot")
    try:
        check_options(
            loss.beta,
            loss.penalty,
            loss.label_smoothing,
            loss.sort,
            loss.sort_strength,
            "loss.",
            smoothing_rule=aot,
        )
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _check_model(cfg: DictConfig) -> None:
    if cfg.model.dtype not in DTYPES:
        raise ConfigError(f"model.dtype={cfg.model.dtype!r} is unknown; valid: {', '.join(DTYPES)}")


def _check_train(cfg: DictConfig) -> None:
    train = cfg.train
    if train.max_prompt_length >= train.max_length:
        raise ConfigError(
            f"train.max_prompt_length={train.max_prompt_length} must be below train.max_length={train.max_length} "
            "(prompts keep their last max_prompt_length tokens; completions get the rest)"
        )
    if not (isinstance(train.logps_chunk, int) and train.logps_chunk >= 0):
        raise ConfigError(
            "train.logps_chunk must be a whole number of tokens >= 0 (0 = full-vocabulary logits), "
            f"got {train.logps_chunk!r}"
        )
    if (
        train.resume not in ("auto", "never")
        and not (Path(str(train.resume)) / "trainer_state.json").is_file()
    ):
        raise ConfigError(
            f"train.resume={train.resume!r}: no checkpoint there (no trainer_state.json); "
            "valid: auto, never, or a checkpoint-<step> directory"
        )
    if cfg.loss.name == "kto" and train.precompute_ref:
        raise ConfigError(
            "train.precompute_ref is for our trainer; kto runs on TRL's KTOTrainer (not supported)"
        )


def _check_ot_batch(cfg: DictConfig) -> None:
    method, loss, micro = cfg.loss.name, cfg.loss, cfg.train.per_device_train_batch_size
    if method.startswith("aot") and micro < 2:
        raise ConfigError(
            f"loss={method} with train.per_device_train_batch_size=1 sorts a single value per side, "
            "so AOT reduces to a per-pair loss; use a per-device batch of at least 2"
        )
    rows = loss.ot_batch_size or micro
    if method.startswith("aot") and loss.sort == "sinkhorn" and rows > SINKHORN_MAX_N:
        raise ConfigError(
            f"loss.sort=sinkhorn sorts {rows} values per device, above its limit of {SINKHORN_MAX_N} "
            "(O(n^2) per iteration, unrolled through autograd); use loss.sort=soft (PAV) or hard"
        )
    if loss.ot_batch not in ("global", "local"):
        raise ConfigError(f"loss.ot_batch must be global or local, got {loss.ot_batch!r}")
    size = loss.ot_batch_size
    if size is not None and (method == "kto" or size < micro or size % micro):
        raise ConfigError(
            f"loss.ot_batch_size={size} must be a multiple of train.per_device_train_batch_size={micro}"
            + (" and is not available for kto" if method == "kto" else "")
        )


def _check_rows(cfg: DictConfig) -> None:
    """Paired-only methods against the rows the data recipe declares (local files: at load)."""
    kind = declared_kind(cfg.data)
    if kind is not None:
        try:
            check_rows(
                cfg.loss.name,
                kind,
                f"data={cfg.data.name}"
                + (f" (data.view={cfg.data.view})" if cfg.data.source == "sample" else ""),
            )
        except ValueError as e:
            raise ConfigError(str(e)) from None


# --- objects -----------------------------------------------------------------------------------------


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
    check_config(cfg)
    train = cfg.train
    common = dict(
        output_dir=output_dir or cfg.output_dir,
        seed=cfg.seed,
        max_steps=train.max_steps,
        num_train_epochs=train.num_train_epochs,
        # Two-pass: the dataloader yields ot_batch_size rows, split into micro-batches by the collator.
        per_device_train_batch_size=cfg.loss.ot_batch_size or train.per_device_train_batch_size,
        per_device_eval_batch_size=train.per_device_eval_batch_size,
        gradient_accumulation_steps=train.gradient_accumulation_steps,
        learning_rate=train.learning_rate,
        optim=train.optim,
        lr_scheduler_type=train.lr_scheduler_type,
        warmup_steps=train.warmup_steps,
        weight_decay=train.weight_decay,
        logging_steps=train.logging_steps,
        save_steps=train.save_steps,
        save_total_limit=train.save_total_limit,
        bf16=use_bf16(cfg),
        activation_checkpointing=train.gradient_checkpointing,
        report_to=[] if train.report_to in (None, "none") else train.report_to,
        use_cpu=not torch.cuda.is_available(),
        remove_unused_columns=False,
        disable_tqdm=False,
    )
    if cfg.loss.name == "kto":
        from trl import KTOConfig  # TRL only for the method it trains (its import takes seconds)

        return KTOConfig(
            **common,
            beta=cfg.loss.beta,
            desirable_weight=cfg.loss.desirable_weight,
            undesirable_weight=cfg.loss.undesirable_weight,
            max_length=train.max_length,
            disable_dropout=train.disable_dropout,
        )
    return TrainingArguments(**common)


def loss_kwargs(cfg: DictConfig) -> dict:
    """The loss section's values that the method's loss function takes (kto: none of ours)."""
    if METHODS[cfg.loss.name] is None:
        return {}
    fn = (
        aot_loss if cfg.loss.name.startswith("aot") else METHODS[cfg.loss.name]
    )  # the AOT wrappers pass them on
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
