"""Recipes composed and checked, and a run's identity, with nothing of the ML stack imported.

Everything here is cheap (``scripts/train.py --cfg job`` territory): it imports Hydra, OmegaConf
and the torch-free registry of names (``aot.names``), never torch, transformers, peft, datasets
or accelerate (``tests/unit/test_startup.py``), so a bad setting is answered at once, before any
model or data is touched. The objects a run starts from (``TrainingArguments``, the loss's
keyword arguments) are built in ``aot.arguments``. The recipes are package data (``aot.recipes``,
the checkout's ``recipes/``).
"""

from __future__ import annotations

import json
import os
from importlib.resources import files
from pathlib import Path

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from aot.files import short_hash
from aot.names import DATA_SOURCES, METHOD_NAMES, SINKHORN_MAX_N, check_options, check_rows


class ConfigError(ValueError):
    """A config that cannot run, caught before anything is loaded."""


def _recipes() -> Path:
    """The recipes: package data ``aot.recipes`` where the project is installed, else the
    checkout's ``recipes/`` beside this package (a checkout imported from its path, uninstalled,
    as benchmarks/gpu_check.sh runs on a lent GPU machine)."""
    try:
        return Path(str(files("aot.recipes")))
    except ModuleNotFoundError:
        return Path(__file__).resolve().parents[1] / "recipes"


RECIPES = _recipes()
DTYPES = ("float32", "bfloat16", "float16")
#: set by ``accelerate launch`` to its config's ``mixed_precision`` ("no", "bf16", "fp16", ...)
LAUNCH_PRECISION = "ACCELERATE_MIXED_PRECISION"


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
    for check in (_check_loss, _check_model, _check_train, _check_precision, _check_ot_batch, _check_rows):
        check(cfg)


def _check_loss(cfg: DictConfig) -> None:
    loss = cfg.loss
    if loss.name not in METHOD_NAMES:
        raise ConfigError(f"unknown loss {loss.name!r}; valid: {', '.join(METHOD_NAMES)}")
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
    if train.padding_free not in ("auto", True, False):
        raise ConfigError(
            f"train.padding_free={train.padding_free!r} is unknown; valid: auto (pack where the model can), "
            "true (pack, or refuse a model that cannot), false (pad)"
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


def _check_precision(cfg: DictConfig) -> None:
    """``train.bf16`` is auto, true or false; an explicit value must agree with the launch config's
    ``mixed_precision`` when accelerate launched the run (DeepSpeed refuses the mismatch, FSDP
    would silently compute in another precision)."""
    bf16, launched = cfg.train.bf16, os.environ.get(LAUNCH_PRECISION)
    if bf16 != "auto" and not isinstance(bf16, bool):
        raise ConfigError(f"train.bf16={bf16!r} is unknown; valid: auto, true, false")
    if bf16 != "auto" and launched in ("no", "bf16") and bf16 != (launched == "bf16"):
        raise ConfigError(
            f"train.bf16={bf16} but the launch config has mixed_precision: {launched}; leave train.bf16=auto "
            "(it follows the launch config) or launch with --mixed_precision " + ("bf16" if bf16 else "no")
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


def declared_kind(data_cfg) -> str | None:
    """The rows a data recipe gives, "paired" or "unpaired", known before loading; ``None`` for
    local files, whose columns say (``aot.data.detect_kind``)."""
    if data_cfg.source == "sample":
        return "unpaired" if data_cfg.view == "unpaired" else "paired"
    return DATA_SOURCES[data_cfg.source]


def _check_rows(cfg: DictConfig) -> None:
    """A known ``data.source``; paired-only methods against the rows the data recipe declares
    (local files: at load)."""
    if cfg.data.source not in DATA_SOURCES:
        raise ConfigError(f"data.source={cfg.data.source!r} is unknown; valid: {', '.join(DATA_SOURCES)}")
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


# --- what a run prints ------------------------------------------------------------------------------


def ot_batch_line(cfg, world_size: int) -> str:
    """How many rows' values are sorted together, e.g. 'OT batch: 512 = 8 per device x 2 ranks x 32'."""
    micro = cfg.train.per_device_train_batch_size
    passes = (cfg.loss.ot_batch_size or micro) // micro
    ranks = world_size if cfg.loss.ot_batch == "global" else 1
    line = f"OT batch: {micro * ranks * passes} = {micro} per device x {ranks} rank{'s' if ranks > 1 else ''} x {passes}"
    if cfg.loss.ot_batch == "local" and world_size > 1:
        line += f" (local: each of {world_size} ranks sorts its own)"
    return line + (" (two-pass step)" if passes > 1 else "")
