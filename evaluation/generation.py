"""Answers of a run (or a base model) to an instruction set, for AlpacaEval.

Two engines, one output file:

- ``hf`` (the default, runs anywhere): Hugging Face ``generate`` on the run's model with its
  adapter merged, prompts sorted by length so that a batch pads little, a progress bar with
  tokens per second, the throughput recorded in ``generation.json``;
- ``vllm``: the same prompts through vLLM (``evaluation.vllm_worker``) in a Python of its own
  (vLLM pins its own torch): a LoRA run through vLLM's LoRA support, tensor parallelism for large
  models.

Decoding presets say what they reproduce (``DECODING``); the preset, the engine and every
setting are part of the output file's key and are stored beside it, so that greedy and sampled
outputs never mix. Rows are appended as they come (each with its index in the instruction set):
an interrupted generation resumes, a rerun with the same settings reuses them.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from pathlib import Path

import torch
import yaml
from tqdm import tqdm
from transformers import AutoTokenizer

from aot.files import short_hash
from aot.models import load_for_generation

log = logging.getLogger("aot")

#: decoding presets. greedy: reproducible, this repo's default. leaderboard: what the
#: merlinite-7B-AOT entry of the AlpacaEval leaderboard records (models_configs/merlinite-7B-AOT:
#: vLLM, bf16, temperature 0.7, top_p 0.9, max_tokens 2,048).
DECODING = {
    "greedy": {"do_sample": False, "temperature": 0.0, "top_p": 1.0, "max_new_tokens": 2048},
    "leaderboard": {"do_sample": True, "temperature": 0.7, "top_p": 0.9, "max_new_tokens": 2048, "seed": 0},
}
ENGINES = ("hf", "vllm")
#: the default settings: greedy decoding with Hugging Face generate
GENERATION = {"decoding": "greedy", **DECODING["greedy"], "engine": "hf"}
VLLM_INSTALL = (
    "make vllm (a venv of its own, .venv-vllm: vLLM pins its own torch), "
    "or point VLLM_PYTHON at a Python that has vLLM"
)


class VllmMissing(RuntimeError):
    """GEN=vllm without a Python that has vLLM; the message says how to install it."""


def settings_for(
    decoding: str = "greedy", engine: str = "hf", max_new_tokens: int | None = None, **extra
) -> dict:
    """The generation settings of a preset and an engine (every value goes into the output key)."""
    if decoding not in DECODING:
        raise ValueError(f"unknown decoding {decoding!r}; valid: {', '.join(DECODING)}")
    if engine not in ENGINES:
        raise ValueError(f"unknown generation engine {engine!r}; valid: {', '.join(ENGINES)}")
    settings = {"decoding": decoding, **DECODING[decoding], "engine": engine, **extra}
    if max_new_tokens:
        settings["max_new_tokens"] = int(max_new_tokens)
    return settings


def run_model(run_dir: Path) -> tuple[str, str | None, str, dict]:
    """(base model, adapter directory or None, tokenizer directory, config) of a run directory
    (a LoRA run: its base and adapter; a full run: its own weights; a base row: the model itself)."""
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    base = cfg["model"]["name_or_path"]
    if (run_dir / "adapter_config.json").is_file():
        return base, str(run_dir), str(run_dir), cfg
    if cfg.get("loss", {}).get("name") == "base":
        return base, None, base, cfg
    return str(run_dir), None, str(run_dir), cfg


def chat_prompts(tokenizer, records: list[dict]) -> list[str]:
    return [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": r["instruction"]}], add_generation_prompt=True, tokenize=False
        )
        for r in records
    ]


def _with_fallback_template(tokenizer, cfg: dict):
    if not tokenizer.chat_template and cfg["model"].get("chat_template"):  # a recipe's fallback
        tokenizer.chat_template = cfg["model"]["chat_template"]
    return tokenizer


def generate(
    run_dir: Path, records: list[dict], settings: dict, batch_size: int | None = None, by_length: bool = True
) -> Path:
    """Outputs for every instruction, resumable; returns the JSONL file (rows in instruction order
    once complete). hf: ``batch_size`` prompts per batch (default 64 on a GPU, 16 on a CPU), taken
    longest first (``by_length=False``: in the given order, as ``make bench-generation`` compares)."""
    key = short_hash(
        json.dumps({"settings": settings, "instructions": [r["instruction"] for r in records]}), 10
    )
    out_dir = run_dir / "eval" / "alpaca"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"outputs-{key}.jsonl"
    (out_dir / f"outputs-{key}.settings.json").write_text(json.dumps(settings, indent=2) + "\n")
    done = (
        {row["index"]: row for row in map(json.loads, path.read_text().splitlines())}
        if path.is_file()
        else {}
    )
    todo = [i for i in range(len(records)) if i not in done]
    if not todo:
        log.info("reusing %d generated outputs from %s", len(done), path)
        return _in_order(path, done)
    if done:
        log.info("resuming generation at %d / %d (%s)", len(done), len(records), path)
    stem = out_dir / f"outputs-{key}"
    answers = (
        _generate_vllm(run_dir, records, todo, settings, stem)
        if settings.get("engine") == "vllm"
        else _generate_hf(run_dir, records, todo, settings, batch_size, by_length, stem)
    )
    with path.open("a") as f:
        for index, text in answers:
            r = records[index]
            row = {
                "index": index,
                "instruction": r["instruction"],
                "output": text.strip(),
                "generator": run_dir.name,
                "dataset": r.get("dataset", "local"),
            }
            f.write(json.dumps(row) + "\n")
            f.flush()  # every answer survives an interruption
            done[index] = row
    return _in_order(path, done)


def _in_order(path: Path, done: dict) -> Path:
    path.write_text("".join(json.dumps(done[i]) + "\n" for i in sorted(done)))
    return path


def _generate_hf(run_dir, records, todo, settings, batch_size, by_length, stem):
    base, adapter, tokenizer_from, cfg = run_model(run_dir)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model, tokenizer = load_for_generation(base, adapter, dtype, tokenizer_from=tokenizer_from)
    model = model.to(device)
    tokenizer = _with_fallback_template(tokenizer, cfg)
    prompts = dict(zip(todo, chat_prompts(tokenizer, [records[i] for i in todo])))
    lengths = {i: len(tokenizer(p, add_special_tokens=False)["input_ids"]) for i, p in prompts.items()}
    # longest first: a batch pads little, and an out-of-memory error shows at once
    order = sorted(todo, key=lambda i: -lengths[i]) if by_length else list(todo)
    batch = batch_size or (64 if device == "cuda" else 16)
    sampling = {k: settings[k] for k in ("temperature", "top_p") if settings["do_sample"]}
    started, new_tokens = time.perf_counter(), 0
    bar = tqdm(total=len(order), desc=f"generating ({run_dir.name})", unit="answer")
    for start in range(0, len(order), batch):
        chunk = order[start : start + batch]
        if settings.get("seed") is not None:
            torch.manual_seed(int(settings["seed"]) + start)
        enc = tokenizer(
            [prompts[i] for i in chunk], return_tensors="pt", padding=True, add_special_tokens=False
        ).to(device)
        with torch.no_grad():
            ids = model.generate(
                **enc,
                max_new_tokens=int(settings["max_new_tokens"]),
                do_sample=bool(settings["do_sample"]),
                pad_token_id=tokenizer.pad_token_id,
                **sampling,
            )
        answers = ids[:, enc["input_ids"].shape[1] :]
        new_tokens += int((answers != tokenizer.pad_token_id).sum())
        bar.update(len(chunk))
        bar.set_postfix(tokens_per_s=f"{new_tokens / (time.perf_counter() - started):.1f}")
        yield from zip(chunk, tokenizer.batch_decode(answers, skip_special_tokens=True))
    bar.close()
    seconds = time.perf_counter() - started
    stats = {"engine": "hf", "device": device, "batch_size": batch, "answers": len(order), "new_tokens": new_tokens,
             "seconds": round(seconds, 2), "tokens_per_second": round(new_tokens / max(seconds, 1e-9), 2)}  # fmt: skip
    stem.with_suffix(".generation.json").write_text(json.dumps(stats, indent=2) + "\n")
    log.info(
        "generated %d answers, %d tokens in %.1f s: %.1f tokens/s",
        len(order),
        new_tokens,
        seconds,
        stats["tokens_per_second"],
    )


def vllm_job(run_dir: Path, records: list[dict], todo: list[int], settings: dict) -> dict:
    """What the vLLM worker is asked to do: prompts rendered with the run's chat template, the
    model and its LoRA adapter, sampling parameters, tensor parallelism."""
    base, adapter, tokenizer_from, cfg = run_model(run_dir)
    tokenizer = _with_fallback_template(AutoTokenizer.from_pretrained(tokenizer_from), cfg)
    sampling = {
        "temperature": settings["temperature"],
        "top_p": settings["top_p"],
        "max_tokens": int(settings["max_new_tokens"]),
    }
    if settings.get("seed") is not None:
        sampling["seed"] = int(settings["seed"])
    return {
        "model": base,
        "tokenizer": tokenizer_from if adapter is None else base,
        "lora": adapter,
        "lora_rank": json.loads((Path(adapter) / "adapter_config.json").read_text())["r"]
        if adapter
        else None,
        "indices": todo,
        "prompts": chat_prompts(tokenizer, [records[i] for i in todo]),
        "sampling": sampling,
        "tensor_parallel_size": int(settings.get("tensor_parallel_size", 1)),
        "dtype": "bfloat16",
    }


def vllm_python() -> str:
    """The Python with vLLM: ``$VLLM_PYTHON``, else ``.venv-vllm/bin/python``; a clear error when none."""
    python = os.environ.get("VLLM_PYTHON") or str(Path(".venv-vllm") / "bin" / "python")
    found = (
        Path(python).is_file()
        and subprocess.run([python, "-c", "import vllm"], capture_output=True).returncode == 0
    )
    if not found:
        raise VllmMissing(f"GEN=vllm: no Python with vLLM at {python}. Install it with: {VLLM_INSTALL}")
    return python


def _generate_vllm(run_dir, records, todo, settings, stem):
    python = vllm_python()  # before the tokenizer loads: a missing vLLM fails at once
    job = vllm_job(run_dir, records, todo, settings)
    job_path, out_path = stem.with_suffix(".vllm-job.json"), stem.with_suffix(".vllm-out.jsonl")
    job_path.write_text(json.dumps(job, indent=1) + "\n")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]
        ),
    }
    proc = subprocess.run([python, "-m", "evaluation.vllm_worker", str(job_path), str(out_path)], env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"the vLLM worker failed ({python}, exit {proc.returncode}); its job: {job_path}")
    for line in out_path.read_text().splitlines():
        row = json.loads(line)
        yield row["index"], row["text"]
