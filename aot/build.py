"""Everything one run trains with: the model and tokenizer, the tokenised train rows, and the
trainer (ours, or TRL's KTOTrainer for kto), set up for the backend the launch asks for."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import datasets
import torch
from omegaconf import DictConfig
from transformers import PreTrainedTokenizerBase, Trainer, TrainingArguments

from aot.arguments import loss_kwargs
from aot.backends import (
    one_device_per_process,
    place_before_sharding,
    set_fsdp2_precision,
    steer_cpu_sharding,
)
from aot.batches import PreferenceCollator, tokenize_split
from aot.config import ConfigError
from aot.data import Split, unpair
from aot.models import load_models, load_tokenizer, model_path
from aot.packing import use_packed_attention, why_not_packed
from aot.precompute import attach_ref_logps
from aot.trainer import PreferenceTrainer, TrainerHooks

log = logging.getLogger("aot")


@dataclass
class Run:
    """What one run trains with, once built (``build_run``)."""

    path: str  # the model directory (a fixture's build, a hub snapshot, or as given)
    tokenizer: PreTrainedTokenizerBase
    policy: torch.nn.Module
    reference: torch.nn.Module | None  # the frozen copy of full fine-tuning; None with LoRA
    features: list[dict]  # the tokenised train rows
    truncated: dict  # how many train prompts and completions were cut
    trainer: Trainer
    layout: dict  # {"padding_free": bool, "why_padded": reason or None}

    def collator(self, micro_batch_size: int | None = None) -> PreferenceCollator:
        """A collator in this run's layout (padded or packed)."""
        packed = self.layout["padding_free"]
        return PreferenceCollator(self.tokenizer.pad_token_id, micro_batch_size, packed=packed)


def choose_layout(cfg, policy, reference=None) -> dict:
    """Packed (padding-free) or padded, from ``train.padding_free`` and what the model allows; a
    packing run switches the policy (and a frozen reference copy) to packed attention. ``true``
    with a model that cannot pack is refused; ``auto`` pads and says why."""
    setting = cfg.train.padding_free
    if setting is False:
        return {"padding_free": False, "why_padded": "train.padding_free=false"}
    why = (
        "kto runs on TRL's KTOTrainer"
        if cfg.loss.name == "kto"
        else why_not_packed(policy, cfg.train.max_length)
    )
    if why is not None:
        if setting is True:
            raise ConfigError(f"train.padding_free=true, but this run cannot pack: {why}; use auto or false")
        log.warning("padded batches: %s", why)
        return {"padding_free": False, "why_padded": why}
    for model in (policy, reference):
        if model is not None:
            use_packed_attention(model)
    return {"padding_free": True, "why_padded": None}


def make_trainer(cfg, args, policy, reference, tokenizer, train_split, train_features):
    """Our ``PreferenceTrainer`` (batches packed or padded: ``choose_layout``, kept as
    ``trainer.layout``), or TRL's ``KTOTrainer`` for kto (on unpaired rows)."""
    one_device_per_process(args)
    layout = choose_layout(cfg, policy, reference)
    packed = layout["padding_free"]
    policy = place_before_sharding(policy, args.device)
    if cfg.loss.name != "kto":
        micro = cfg.train.per_device_train_batch_size if cfg.loss.ot_batch_size else None
        trainer = PreferenceTrainer(
            model=policy,
            args=args,
            train_dataset=train_features,
            data_collator=PreferenceCollator(tokenizer.pad_token_id, micro, packed=packed),
            processing_class=tokenizer,
            method=cfg.loss.name,
            loss_kwargs=loss_kwargs(cfg),
            ref_model=reference,
            logps_chunk=cfg.train.logps_chunk,
        )
    else:
        from trl import KTOTrainer  # TRL only for the method it trains (its import takes seconds)

        class KTO(TrainerHooks, KTOTrainer):
            """TRL's KTO with this repo's checkpoints and preparation hooks."""

        rows = [
            {"prompt": r["prompt"], "completion": r["completion"], "label": r["label"]}
            for r in unpair(train_split).rows
        ]
        trainer = KTO(
            model=policy,
            ref_model=reference,
            args=args,
            train_dataset=datasets.Dataset.from_list(rows),
            processing_class=tokenizer,
        )
    trainer.save_dtype = getattr(torch, cfg.model.dtype)
    trainer.layout = layout
    set_fsdp2_precision(trainer)
    return trainer


def build_run(cfg: DictConfig, args: TrainingArguments, train_split: Split) -> Run:
    """Load the model, tokenise the train split, build the trainer. With train.precompute_ref the
    reference log-probs are attached once the trainer has prepared the model (every rank)."""
    steer_cpu_sharding(args)
    with args.main_process_first(desc="model files"):  # one download (or fixture build) per node
        path = model_path(cfg, download=args.local_process_index == 0)
    tokenizer = load_tokenizer(cfg, path)
    policy, reference = load_models(cfg, path)
    features, truncated = tokenize_split(
        train_split, tokenizer, cfg.train.max_length, cfg.train.max_prompt_length
    )
    trainer = make_trainer(cfg, args, policy, reference, tokenizer, train_split, features)
    run = Run(path, tokenizer, policy, reference, features, truncated, trainer, trainer.layout)
    if cfg.train.precompute_ref:
        trainer.once_prepared.append(
            (
                "precompute reference log-probs",
                lambda: attach_ref_logps(cfg, path, trainer, features, run.collator()),
            )
        )
    return run
