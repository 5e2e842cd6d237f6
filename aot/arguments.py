"""What a run starts from, built from a checked config where the run starts (``aot.run``): the
``TrainingArguments`` (``KTOConfig`` for kto), the bf16 decision and the loss's keyword arguments.

These need torch and transformers, which is why they are not in ``aot.config``: composing,
printing and checking a recipe import neither.
"""

from __future__ import annotations

import inspect
import os

import torch
from omegaconf import DictConfig, OmegaConf
from transformers import TrainingArguments

from aot.config import LAUNCH_PRECISION, check_config
from aot.losses import aot_loss
from aot.methods import METHODS


def use_bf16(cfg: DictConfig) -> bool:
    """``train.bf16``: auto follows the launch config's ``mixed_precision`` when accelerate launched
    the run (``$ACCELERATE_MIXED_PRECISION``), else whether a CUDA GPU supports bf16. An explicit
    value is taken as it is (``aot.config.check_config`` refuses one that contradicts the launch)."""
    bf16, launched = cfg.train.bf16, os.environ.get(LAUNCH_PRECISION)
    if bf16 != "auto":
        return bool(bf16)
    if launched is not None:
        return launched == "bf16"
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def build_training_args(cfg: DictConfig, output_dir: str | None = None):
    """``TrainingArguments`` (``KTOConfig`` for kto) from the ``train`` and ``loss`` sections,
    after ``check_config``."""
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
