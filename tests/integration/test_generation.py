"""Generation for AlpacaEval: decoding presets recorded with the outputs, the Hugging Face path
sorted by length and resumable, and the vLLM path up to the engine call (a stand-in for vLLM's
API, tests/helpers/standin_vllm, since the engine needs a GPU)."""

import json
import os
import sys
from pathlib import Path

import pytest

from evaluation.generation import DECODING, GENERATION, VllmMissing, generate, settings_for, vllm_job

pytestmark = pytest.mark.slow
RECORDS = [
    {"instruction": "What color is snow?", "output": "White.", "generator": "ref", "dataset": "local"},
    {
        "instruction": "Name a fruit that is yellow and long, and say why.",
        "output": "A banana.",
        "generator": "ref",
        "dataset": "local",
    },
    {"instruction": "Hi?", "output": "Hello.", "generator": "ref", "dataset": "local"},
]
STANDIN = Path(__file__).resolve().parents[1] / "helpers" / "standin_vllm"


def test_presets_say_what_they_reproduce():
    assert GENERATION == settings_for("greedy", "hf")
    leaderboard = settings_for("leaderboard", "vllm", 512, instruction_set="x")
    assert leaderboard == {
        **DECODING["leaderboard"],
        "decoding": "leaderboard",
        "engine": "vllm",
        "max_new_tokens": 512,
        "instruction_set": "x",
    }
    assert (leaderboard["temperature"], leaderboard["top_p"]) == (0.7, 0.9)  # merlinite-7B-AOT's record
    with pytest.raises(ValueError, match="valid: greedy, leaderboard"):
        settings_for("beam")


def test_hf_generation_keeps_instruction_order_and_records_throughput(lora_run):
    settings = settings_for("greedy", "hf", 8, instruction_set="t")
    path = generate(lora_run, RECORDS, settings, batch_size=2)  # longest first: batches of 2 and 1
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["index"] for r in rows] == [0, 1, 2] and [r["instruction"] for r in rows] == [
        r["instruction"] for r in RECORDS
    ]
    stats = json.loads(path.with_suffix(".generation.json").read_text())
    assert stats["answers"] == 3 and stats["new_tokens"] > 0 and stats["tokens_per_second"] > 0
    # Sampled decoding gets its own file: greedy and sampled outputs never mix.
    sampled = generate(
        lora_run, RECORDS, settings_for("leaderboard", "hf", 8, instruction_set="t"), batch_size=2
    )
    assert sampled != path
    assert (
        json.loads(sampled.with_name(sampled.stem + ".settings.json").read_text())["decoding"]
        == "leaderboard"
    )


def test_vllm_job_holds_the_chat_prompts_the_adapter_and_the_sampling(lora_run):
    settings = settings_for("leaderboard", "vllm", 64, instruction_set="t", tensor_parallel_size=2)
    job = vllm_job(lora_run, RECORDS, [0, 2], settings)
    assert job["lora"] == str(lora_run) and job["lora_rank"] == 8  # the tiny recipe's LoRA rank
    assert job["indices"] == [0, 2] and len(job["prompts"]) == 2
    assert all(
        p.startswith("<|bos|><|user|>") and p.endswith("<|assistant|>") for p in job["prompts"]
    )  # its chat template
    assert job["sampling"] == {"temperature": 0.7, "top_p": 0.9, "max_tokens": 64, "seed": 0}
    assert job["tensor_parallel_size"] == 2 and job["dtype"] == "bfloat16"


def test_without_vllm_the_command_says_how_to_install_it(lora_run, monkeypatch):
    monkeypatch.setenv("VLLM_PYTHON", "/nowhere/python")
    with pytest.raises(VllmMissing, match="make vllm"):
        generate(lora_run, RECORDS, settings_for("greedy", "vllm", 8, instruction_set="missing"))


def test_vllm_generation_through_the_worker_up_to_the_engine(lora_run, monkeypatch, tmp_path):
    log = tmp_path / "vllm.jsonl"
    monkeypatch.setenv("VLLM_PYTHON", sys.executable)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(STANDIN), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("STANDIN_VLLM_LOG", str(log))
    settings = settings_for("leaderboard", "vllm", 32, instruction_set="w", tensor_parallel_size=1)
    path = generate(lora_run, RECORDS, settings)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["output"] for r in rows] == ["stand-in answer 0", "stand-in answer 1", "stand-in answer 2"]
    init, call = [json.loads(line) for line in log.read_text().splitlines()]
    assert init["enable_lora"] is True and init["tensor_parallel_size"] == 1
    assert (
        call["lora"] == str(lora_run) and call["sampling"]["temperature"] == 0.7 and len(call["prompts"]) == 3
    )
