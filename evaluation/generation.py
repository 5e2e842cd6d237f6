"""Answers of a run (or a base model) to an instruction set, for AlpacaEval.

Two engines, one output file, the same prompt token ids (``evaluation.runs.prompt_ids``):

- ``hf`` (the default, runs anywhere): Hugging Face ``generate`` on the run's model with its
  adapter merged, prompts sorted by length so that a batch pads little, a progress bar with
  tokens per second, the throughput recorded in ``generation.json``;
- ``vllm``: the same ids through vLLM (``evaluation.vllm_worker``) in a Python of its own
  (``evaluation.vllm_env``): a LoRA run through vLLM's LoRA support, tensor parallelism for
  large models.

Decoding presets say what they reproduce (``DECODING``); the preset, the engine and every
setting are part of the output file's key and are stored beside it, so that greedy and sampled
outputs never mix. Rows are appended as they come (each with its index in the instruction set):
an interrupted generation resumes, a rerun with the same settings reuses them. Beside the
answers, ``<key>.tokens.jsonl`` keeps for each the prompt ids the engine was given (vLLM: the ids
it reports having received) and the answer's ids.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch
from tqdm import tqdm

from aot.files import short_hash
from aot.models import load_for_generation
from evaluation.runs import prompt_ids, run_model, run_tokenizer
from evaluation.vllm_env import adapter_rank, max_lora_rank, run_worker, vllm_python

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


def describe(settings: dict) -> str:
    """What sets a generation apart from the default (greedy, hf, the preset's length, the
    AlpacaEval set): "" for the default, else e.g. "leaderboard decoding, vllm, 512 new tokens".
    Results of different generations get different table columns under this name."""
    decoding = settings.get("decoding", "greedy")
    parts = [] if decoding == "greedy" else [f"{decoding} decoding"]
    if settings.get("engine", "hf") != "hf":
        parts.append(settings["engine"])
    if (
        settings.get("max_new_tokens", DECODING[decoding]["max_new_tokens"])
        != DECODING[decoding]["max_new_tokens"]
    ):
        parts.append(f"{settings['max_new_tokens']} new tokens")
    if settings.get("instruction_set", "alpaca_eval") != "alpaca_eval":
        parts.append(f"set {Path(settings['instruction_set']).name}")
    return ", ".join(parts)


def outputs_key(settings: dict, records: list[dict]) -> str:
    """The key of one generation: its settings and instructions (outputs and results files)."""
    return short_hash(
        json.dumps({"settings": settings, "instructions": [r["instruction"] for r in records]}), 10
    )


def device_and_dtype() -> tuple[str, torch.dtype]:
    """Where both engines generate, and in what precision: bf16 on a GPU, float32 on a CPU."""
    return ("cuda", torch.bfloat16) if torch.cuda.is_available() else ("cpu", torch.float32)


def generate(
    run_dir: Path, records: list[dict], settings: dict, batch_size: int | None = None, by_length: bool = True
) -> Path:
    """Outputs for every instruction, resumable; returns the JSONL file (rows in instruction order
    once complete). hf: ``batch_size`` prompts per batch (default 64 on a GPU, 16 on a CPU), taken
    longest first (``by_length=False``: in the given order, as ``make bench-generation`` compares)."""
    out_dir = run_dir / "eval" / "alpaca"
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"outputs-{outputs_key(settings, records)}"
    path = stem.with_suffix(".jsonl")
    stem.with_suffix(".settings.json").write_text(json.dumps(settings, indent=2) + "\n")
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
    answers = (
        _generate_vllm(run_dir, records, todo, settings, stem)
        if settings.get("engine") == "vllm"
        else _generate_hf(run_dir, records, todo, settings, batch_size, by_length, stem)
    )
    with path.open("a") as f, stem.with_suffix(".tokens.jsonl").open("a") as tokens:
        for index, text, prompt, answer in answers:
            r = records[index]
            row = {
                "index": index,
                "instruction": r["instruction"],
                "output": text.strip(),
                "generator": run_dir.name,
                "dataset": r.get("dataset", "local"),
            }
            tokens.write(json.dumps({"index": index, "prompt_ids": prompt, "output_ids": answer}) + "\n")
            f.write(json.dumps(row) + "\n")
            f.flush()  # every answer survives an interruption
            done[index] = row
    return _in_order(path, done)


def _in_order(path: Path, done: dict) -> Path:
    path.write_text("".join(json.dumps(done[i]) + "\n" for i in sorted(done)))
    return path


def _generate_hf(run_dir, records, todo, settings, batch_size, by_length, stem):
    base, adapter, tokenizer_from, _ = run_model(run_dir)
    device, dtype = device_and_dtype()
    model, _ = load_for_generation(base, adapter, dtype, tokenizer_from=tokenizer_from)
    model = model.to(device)
    tokenizer = run_tokenizer(run_dir)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stops = {tokenizer.eos_token_id, *_as_list(model.generation_config.eos_token_id)} - {None}
    ids = dict(zip(todo, prompt_ids(tokenizer, [records[i]["instruction"] for i in todo])))
    # longest first: a batch pads little, and an out-of-memory error shows at once
    order = sorted(todo, key=lambda i: -len(ids[i])) if by_length else list(todo)
    batch = batch_size or (64 if device == "cuda" else 16)
    sampling = {k: settings[k] for k in ("temperature", "top_p") if settings["do_sample"]}
    started, new_tokens = time.perf_counter(), 0
    bar = tqdm(total=len(order), desc=f"generating ({run_dir.name})", unit="answer")
    for start in range(0, len(order), batch):
        chunk = order[start : start + batch]
        if settings.get("seed") is not None:
            torch.manual_seed(int(settings["seed"]) + start)
        width = max(len(ids[i]) for i in chunk)  # padded on the left, as generate expects
        input_ids = torch.tensor([[pad] * (width - len(ids[i])) + ids[i] for i in chunk], device=device)
        mask = torch.tensor([[0] * (width - len(ids[i])) + [1] * len(ids[i]) for i in chunk], device=device)
        with torch.no_grad():
            out = model.generate(
                input_ids=input_ids,
                attention_mask=mask,
                max_new_tokens=int(settings["max_new_tokens"]),
                do_sample=bool(settings["do_sample"]),
                pad_token_id=pad,
                **sampling,
            )
        answers = [_until_stop(row.tolist(), stops) for row in out[:, width:]]
        new_tokens += sum(len(a) for a in answers)
        bar.update(len(chunk))
        bar.set_postfix(tokens_per_s=f"{new_tokens / (time.perf_counter() - started):.1f}")
        for i, answer in zip(chunk, answers):
            yield i, tokenizer.decode(answer, skip_special_tokens=True), ids[i], answer
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


def _as_list(ids) -> list:
    return ids if isinstance(ids, list) else [ids]


def _until_stop(ids: list[int], stops: set[int]) -> list[int]:
    """An answer's ids up to and including its first stop token (as vLLM reports them); after it,
    generate pads."""
    end = next((k for k, token in enumerate(ids) if token in stops), None)
    return ids if end is None else ids[: end + 1]


def vllm_job(run_dir: Path, records: list[dict], todo: list[int], settings: dict) -> dict:
    """What the vLLM worker is asked to do: the engine's arguments (the model, its LoRA adapter with
    the smallest ``max_lora_rank`` vLLM accepts for it, tensor parallelism, the precision of the
    HF path), the prompts as token ids, the sampling parameters."""
    base, adapter, tokenizer_from, _ = run_model(run_dir)
    tokenizer = run_tokenizer(run_dir)
    device, dtype = device_and_dtype()
    engine = {
        "model": base,
        "tokenizer": tokenizer_from,  # the ids below are its; the engine only decodes with it
        "tensor_parallel_size": int(settings.get("tensor_parallel_size", 1)),
        "dtype": str(dtype).removeprefix("torch."),
    }
    if device == "cpu":
        engine["enforce_eager"] = True  # vLLM's CPU build: no graph capture to wait for
    if adapter:
        engine.update(enable_lora=True, max_lora_rank=max_lora_rank(adapter_rank(adapter)))
    sampling = {
        "temperature": settings["temperature"],
        "top_p": settings["top_p"],
        "max_tokens": int(settings["max_new_tokens"]),
    }
    if settings.get("seed") is not None:
        sampling["seed"] = int(settings["seed"])
    return {
        "engine": engine,
        "lora": adapter,
        "indices": todo,
        "prompt_token_ids": prompt_ids(tokenizer, [records[i]["instruction"] for i in todo]),
        "sampling": sampling,
    }


def _generate_vllm(run_dir, records, todo, settings, stem):
    python = vllm_python()  # before the tokenizer loads: a missing vLLM fails at once
    job = vllm_job(run_dir, records, todo, settings)
    out = run_worker(
        python,
        "evaluation.vllm_worker",
        job,
        stem.with_suffix(".vllm-job.json"),
        stem.with_suffix(".vllm-out.jsonl"),
    )
    for line in out.read_text().splitlines():
        row = json.loads(line)
        yield row["index"], row["text"], row["prompt_token_ids"], row["token_ids"]
