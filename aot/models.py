"""Loading models and tokenizers: the one loader for training, evaluation and the experiment.

``model_path`` resolves a recipe's ``model.name_or_path`` to a local directory (the offline
fixtures by name, a directory as given, a hub repository's snapshot otherwise);
``load_tokenizer`` and ``load_models`` build what training needs; ``load_for_generation`` a base
model with an optional adapter merged in, for sampling.
"""

from __future__ import annotations

from pathlib import Path

import torch
from huggingface_hub import snapshot_download
from omegaconf import DictConfig
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed

from aot.config import ConfigError
from aot.fixtures import FIXTURES

#: What a causal LM and its tokenizer load from a hub repository (weights as safetensors; the
#: older ``*.bin`` only when a repository has no safetensors).
MODEL_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]


def model_path(cfg: DictConfig, download: bool = True) -> str:
    """The local directory to load: a fixture by name (``aot.fixtures``), a directory as given, or
    a hub repository's snapshot in the Hugging Face cache, fetched when ``download`` (the first
    process of each node, ``main_process_first``) or found there (every other process)."""
    name = cfg.model.name_or_path
    if name in FIXTURES:
        return str(FIXTURES[name]())
    if Path(name).is_dir():
        return name
    fetch = dict(revision=cfg.model.get("revision"), local_files_only=not download)
    path = snapshot_download(name, allow_patterns=MODEL_FILES, **fetch)
    if not any(Path(path).glob("*.safetensors")):
        path = snapshot_download(name, allow_patterns=[*MODEL_FILES, "*.bin"], **fetch)
    return path


def load_tokenizer(cfg: DictConfig, path: str):
    """The model's tokenizer; the recipe's chat template only when the tokenizer ships none."""
    tokenizer = AutoTokenizer.from_pretrained(path, revision=cfg.model.get("revision"))
    if cfg.model.chat_template and not tokenizer.chat_template:
        tokenizer.chat_template = cfg.model.chat_template
    if tokenizer.chat_template is None:
        raise ConfigError(
            f"{path} has no chat template; set model.chat_template in recipes/model/{cfg.model.id}.yaml"
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_models(cfg: DictConfig, path: str):
    """The policy (LoRA-wrapped unless model.lora=false) and the frozen reference (None with LoRA)."""
    set_seed(cfg.seed)  # LoRA's initialisation draws from the RNG: seed it before, not in the Trainer
    kwargs = dict(
        dtype=getattr(torch, cfg.model.dtype),
        attn_implementation=cfg.model.attn_implementation,
        revision=cfg.model.get("revision"),
    )
    policy = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if cfg.train.disable_dropout:
        for module in policy.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
    if not cfg.model.lora:
        return policy, AutoModelForCausalLM.from_pretrained(path, **kwargs).eval().requires_grad_(False)
    return get_peft_model(policy, lora_config(cfg)), None


def lora_config(cfg: DictConfig) -> LoraConfig:
    """The recipe's LoRA (rank, alpha, dropout, target modules)."""
    m = cfg.model
    return LoraConfig(
        r=m.lora_r,
        lora_alpha=m.lora_alpha,
        lora_dropout=m.lora_dropout,
        target_modules=list(m.lora_target_modules),
        task_type="CAUSAL_LM",
    )


def load_for_generation(
    base: str, adapter: str | Path | None = None, dtype=torch.float32, tokenizer_from=None
):
    """A model for sampling: ``base`` with the LoRA ``adapter`` merged in, in eval mode, and its
    tokenizer (from ``tokenizer_from``, default ``base``) padding on the left."""
    model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
    if adapter:
        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_from or base)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.eval(), tokenizer
