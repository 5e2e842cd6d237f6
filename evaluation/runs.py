"""What an evaluation reads from a run directory: the model to load, its adapter, and the
tokenizer with the chat template the run trained with; and the token ids a prompt becomes.

A run directory is what ``make train`` writes (``config.yaml``, the LoRA adapter or the full
weights, the tokenizer); a base model gets one of its own, ``outputs/<id>-base/``
(``base_run_dir``), so that it is evaluated and tabled like any run.

One rule for prompts (``prompt_ids``), used by every engine: the instruction as a user turn,
rendered with the chat template and tokenized **without** adding special tokens, as training
tokenizes. A template that starts with ``{{ bos_token }}`` (Llama-3, Mistral, Starling, the
Merlinite fallback) gives one BOS; a template without one (ChatML: OpenHermes, SmolLM2) gives
none, as in training. Engines get these ids, never the text: tokenizing the text again with
special tokens (what vLLM does to a text prompt) adds a second BOS, or one training never had.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from omegaconf import OmegaConf
from transformers import AutoTokenizer

from aot.config import RECIPES
from aot.fixtures import FIXTURES
from aot.models import model_path


def run_config(run_dir: str | Path) -> dict:
    """The run's resolved config; a clear error when ``run_dir`` is not a run directory."""
    config = Path(run_dir) / "config.yaml"
    if not config.is_file():
        raise FileNotFoundError(f"{config}: not a run directory (make train writes config.yaml there)")
    return yaml.safe_load(config.read_text())


def run_model(run_dir: Path) -> tuple[str, str | None, str, dict]:
    """(base model, adapter directory or None, tokenizer directory, config) of a run directory
    (a LoRA run: its base and adapter; a full run: its own weights; a base row: the model itself)."""
    cfg = run_config(run_dir)
    base = cfg["model"]["name_or_path"]
    if (Path(run_dir) / "adapter_config.json").is_file():
        return base, str(run_dir), str(run_dir), cfg
    if cfg.get("loss", {}).get("name") == "base":
        return base, None, base, cfg
    return str(run_dir), None, str(run_dir), cfg


def with_template(tokenizer, cfg: dict, source: str):
    """``tokenizer`` with a chat template: its own, else the recipe's fallback
    (``model.chat_template``); a clear error when there is neither."""
    if not tokenizer.chat_template and cfg["model"].get("chat_template"):
        tokenizer.chat_template = cfg["model"]["chat_template"]
    if not tokenizer.chat_template:
        raise ValueError(
            f"{source} has no chat template and the run's config.yaml gives no model.chat_template "
            "(recipes/model/<id>.yaml: chat_template)"
        )
    return tokenizer


def run_tokenizer(run_dir: Path):
    """The tokenizer a run's answers are generated with: the run's saved tokenizer (a base row:
    the model's), with the recipe's fallback template where it ships none."""
    _, _, tokenizer_from, cfg = run_model(run_dir)
    return with_template(AutoTokenizer.from_pretrained(tokenizer_from), cfg, tokenizer_from)


def chat_text(tokenizer, instruction: str) -> str:
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": instruction}], add_generation_prompt=True, tokenize=False
    )


def prompt_ids(tokenizer, instructions: list[str]) -> list[list[int]]:
    """Each instruction as the token ids every engine is given (see the module docstring)."""
    return [
        tokenizer(chat_text(tokenizer, text), add_special_tokens=False)["input_ids"] for text in instructions
    ]


def base_run_dir(model: str, outputs: str | Path = "outputs") -> Path:
    """``outputs/<id>-base/`` for a base model (a recipe name, hub id or local directory), with a
    config.yaml like a run's (model id, path, the recipe's fallback chat template, loss "base"),
    so that it gets evaluated and tabled like any run."""
    recipe = RECIPES / "model" / f"{model}.yaml"
    template = None
    if recipe.is_file():
        spec = yaml.safe_load(recipe.read_text())["model"]
        model_id, path, template = model, spec["name_or_path"], spec.get("chat_template")
        if path in FIXTURES:  # the offline fixtures, built or converted on first use
            path = model_path(OmegaConf.create({"model": {"name_or_path": path}}))
    else:  # a hub id or a local directory
        model_id, path = model.rstrip("/").split("/")[-1], model
    run_dir = Path(outputs) / f"{model_id}-base"
    run_dir.mkdir(parents=True, exist_ok=True)
    config = {
        "model": {"id": model_id, "name_or_path": path, "chat_template": template},
        "loss": {"name": "base"},
        "seed": None,
    }
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    return run_dir
