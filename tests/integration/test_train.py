"""End-to-end runs of the tiny model, and the trainer's pieces against independent oracles."""

import json
import os
import random
import subprocess
import sys

import pytest
import torch
from conftest import REPO, compose

from aot.batches import BothLabelsSampler, PreferenceCollator, merge_micro_batches
from aot.config import ConfigError
from aot.logps import sequence_logps
from aot.run import train


def run(tmp_path, *overrides):
    cfg = compose(f"output_dir={tmp_path}", "train.save_steps=1000", *overrides)
    return train(cfg)


@pytest.mark.slow
@pytest.mark.parametrize(
    "loss,view",
    [
        ("aot_unpaired", "paired"),
        ("aot_unpaired", "unpaired"),
        ("aot_paired", "paired"),
        ("dpo", "paired"),
        ("ipo", "paired"),
        ("kto", "paired"),
        ("kto", "unpaired"),
    ],
)
def test_tiny_runs_end_to_end(tmp_path, tiny_path, loss, view):
    metrics = run(
        tmp_path, f"loss={loss}", f"data.view={view}", "train.max_steps=3", "data.max_test_samples=32"
    )
    assert metrics["method"] == loss and metrics["data"]["train"]["kind"] == view
    assert {
        "config.yaml",
        "metrics.json",
        "quantiles.png",
        "adapter_model.safetensors",
        "tokenizer.json",
    } <= set(os.listdir(tmp_path))
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["eval_before"]["fsd_violation"] == 1.0  # LoRA starts as the reference: equal rewards
    assert "reference_margin_quantiles" in saved["eval_after"]
    assert str(tiny_path) in (tmp_path / "config.yaml").read_text()  # the resolved local path
    if loss.startswith("aot"):
        logged = [h for h in saved["log_history"] if "ot_batch/chosen" in h]
        assert logged and "fsd_violation" in logged[0]
        if view == "unpaired":  # truly unpaired batches: unequal numbers of chosen and rejected
            assert logged[0]["ot_batch/chosen"] + logged[0]["ot_batch/rejected"] == 16


@pytest.mark.slow
def test_short_aot_run_improves_the_distributions(tmp_path, tiny_path):
    metrics = run(tmp_path, "loss=aot_unpaired", "data.view=unpaired", "train.max_steps=30")
    before, after = metrics["eval_before"], metrics["eval_after"]
    assert before["reward_accuracy"] == 0.0 and after["reward_accuracy"] > 0.8
    assert before["fsd_violation"] == 1.0 and after["fsd_violation"] < 0.2
    assert after["aot_violation"] < before["aot_violation"] - 0.005  # beta = 0.01 keeps it near log 2


@pytest.mark.slow
def test_saved_adapter_loads_with_peft_and_changes_the_base(tmp_path, tiny_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run(tmp_path, "train.max_steps=5", "data.max_test_samples=16")
    base = AutoModelForCausalLM.from_pretrained(tiny_path)
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_path), tmp_path)
    ids = AutoTokenizer.from_pretrained(tmp_path)("What color is snow?", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert not torch.allclose(base(ids).logits, tuned(ids).logits)


@pytest.mark.slow
def test_full_finetuning_uses_a_frozen_reference(tmp_path, tiny_path):
    metrics = run(
        tmp_path,
        "model.lora=false",
        "train.max_steps=3",
        "train.learning_rate=1e-3",
        "data.max_test_samples=16",
    )
    assert metrics["eval_after"]["reward_accuracy"] > 0.0
    assert "model.safetensors" in os.listdir(tmp_path)


@pytest.mark.slow
def test_skipped_rows_reach_metrics_json(tmp_path, tiny_path):
    rows = [
        {"prompt": f"What color is item {i}?", "chosen": "It is blue.", "rejected": "no."} for i in range(20)
    ]
    rows.append({"prompt": "p", "chosen": "", "rejected": "r"})
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    metrics = run(
        out,
        "data=local",
        f"data.train_path={data}",
        f"data.test_path={data}",
        "data.skip_invalid=true",
        "train.max_steps=1",
        "train.per_device_train_batch_size=4",
        "train.max_prompt_length=4",
    )
    assert metrics["data"]["train"]["skipped"] == {"field 'chosen'": 1}
    assert metrics["data"]["train"]["prompts_truncated"] == 20


def test_refusals_happen_before_loading(tmp_path):
    with pytest.raises(ConfigError, match="at least 2"):
        run(tmp_path, "train.per_device_train_batch_size=1")
    with pytest.raises(ConfigError, match="needs paired rows"):
        run(tmp_path, "loss=dpo", "data.view=unpaired")
    assert not (tmp_path / "config.yaml").exists()


@pytest.mark.slow
def test_make_train_entry_point(tmp_path, tiny_path):
    """The CLI run from a scratch working directory trains into its default output_dir there
    (outputs/<model>-<loss>-<data>-<hash of the overrides>) and writes nothing else beside it."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    overrides = ["train.max_steps=2", "data.max_test_samples=16"]
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "scripts", "train.py"), *overrides],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (
        "eval reward accuracy : 0.000 ->" in proc.stdout and "eval FSD violation   : 1.000 ->" in proc.stdout
    )
    assert "OT batch: 16 = 16 per device x 1 rank x 1" in proc.stdout + proc.stderr
    assert "s from train() to the first training step" in proc.stdout  # benchmarks/bench_startup.py
    out = cwd / compose(*overrides).output_dir
    assert (out / "metrics.json").is_file() and (out / "train.log").is_file()
    stray = [p for p in cwd.rglob("*") if p != out and out not in p.parents and p not in out.parents]
    assert not stray, f"written outside output_dir: {stray}"


# --- pieces ------------------------------------------------------------------------------------


def test_sequence_logps_match_the_models_own_loss(tiny_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_path)
    features = [
        {"prompt_ids": [1, 4, 50, 60, 2, 5], "chosen_ids": [70, 80, 90, 2], "rejected_ids": [99, 2]},
        {"prompt_ids": [1, 4, 51, 2, 5], "chosen_ids": [71, 2], "rejected_ids": [72, 73, 74, 75, 2]},
    ]
    batch = PreferenceCollator(pad_token_id=0)(features)
    logps, lengths = sequence_logps(model, batch)
    assert lengths.tolist() == [4, 2, 2, 5]
    for i, (p, c) in enumerate(
        [(f["prompt_ids"], f[k]) for k in ("chosen_ids", "rejected_ids") for f in features]
    ):
        ids = torch.tensor([p + c])
        labels = ids.clone()
        labels[0, : len(p)] = -100
        with torch.no_grad():
            mean_nll = model(input_ids=ids, labels=labels).loss  # mean over completion tokens
        assert torch.allclose(logps[i], -mean_nll * len(c), atol=1e-4)


def test_both_labels_sampler():
    labels = [i % 5 < 3 for i in range(103)]  # 62 chosen, 41 rejected
    sampler = BothLabelsSampler(labels, batch_size=8, seed=0)
    order = list(sampler)
    assert sorted(order) == list(range(103))
    counts = []
    for start in range(0, 103, 8):
        block = [labels[i] for i in order[start : start + 8]]
        assert any(block) and not all(block)
        counts.append(sum(block))
    assert len(set(counts)) > 1  # unequal numbers per batch
    sampler.set_epoch(1)
    assert list(sampler) != order


@pytest.mark.parametrize("remainder", range(8))
@pytest.mark.parametrize("ratio", [0.2, 0.35, 0.5, 0.65, 0.8])
def test_both_labels_in_every_batch_for_every_size_and_ratio(remainder, ratio):
    from accelerate.data_loader import BatchSamplerShard
    from torch.utils.data import BatchSampler

    b, n = 8, 80 + remainder
    n_chosen = round(ratio * n)
    labels = [True] * n_chosen + [False] * (n - n_chosen)
    random.Random(remainder).shuffle(labels)
    sampler = BothLabelsSampler(labels, batch_size=b, seed=remainder)
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        order = list(sampler)
        assert len(order) == len(sampler) == n - (remainder == 1) and len(set(order)) == len(order)
        batches = [order[i : i + b] for i in range(0, len(order), b)]
        # ... and per rank, as accelerate shards the batches over 2 or 3 processes.
        for world in (2, 3):
            per_rank = BothLabelsSampler(labels, batch_size=b, seed=remainder, num_processes=world)
            per_rank.set_epoch(epoch)
            assert len(per_rank) == n - remainder
            for rank in range(world):
                shard = BatchSamplerShard(BatchSampler(per_rank, b, False), world, rank, even_batches=True)
                batches += list(shard)
        for batch in batches:
            got = [labels[i] for i in batch]
            assert any(got) and not all(got), (epoch, got)


def test_both_labels_sampler_refuses_what_it_cannot_guarantee():
    with pytest.raises(ValueError, match="per-device batch of at least 10"):
        BothLabelsSampler([True] * 10 + [False] * 90, batch_size=4, seed=0)  # 25 batches, 10 chosen


@pytest.mark.slow
def test_unpaired_run_with_a_remainder_of_one_reaches_its_last_step(tmp_path, tiny_path):
    # 89 rows in batches of 8: the 12th batch used to hold one row, and the run died there.
    metrics = train(
        compose(
            f"output_dir={tmp_path}",
            "data.view=unpaired",
            "data.max_train_samples=89",
            "train.per_device_train_batch_size=8",
            "train.max_steps=-1",
            "data.max_test_samples=8",
        )
    )
    assert metrics["train"]["train_loss"] > 0 and metrics["log_history"][-1]["step"] == 11


def test_unpaired_summary_against_brute_force():
    from aot.diagnostics import summarise

    g = torch.Generator().manual_seed(0)
    policy = {
        "chosen": torch.randn(7, generator=g, dtype=torch.float64),
        "rejected": torch.randn(5, generator=g, dtype=torch.float64),
    }
    reference = {
        "chosen": torch.zeros(7, dtype=torch.float64),
        "rejected": torch.zeros(5, dtype=torch.float64),
    }
    m = summarise(policy, reference, paired=False, beta=0.1, penalty="logistic")
    pairs = [(c > r) for c in policy["chosen"] for r in policy["rejected"]]
    assert m["reward_accuracy"] == pytest.approx(sum(pairs) / len(pairs))
    assert "policy_margin_quantiles" not in m
    assert m["chosen_reward_quantiles"]["q50"] == pytest.approx(float(policy["chosen"].median()))


def test_merged_micro_batches_give_the_same_logps(tiny_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_path)
    features = [
        {"prompt_ids": [1, 4, 50 + i, 2, 5], "chosen_ids": [70, 2] * (1 + i % 3), "rejected_ids": [99, 2]}
        for i in range(6)
    ]
    micro = PreferenceCollator(pad_token_id=0, micro_batch_size=2)(features)["micro_batches"]
    assert len(micro) == 3
    merged = merge_micro_batches(micro)
    with torch.no_grad():
        separate = torch.cat([sequence_logps(model, mb)[0] for mb in micro])
        together = sequence_logps(model, merged)[0]
    assert torch.allclose(separate, together, atol=1e-4)
    assert merged["is_chosen"].tolist() == [True, True, False, False] * 3


@pytest.mark.slow
@pytest.mark.parametrize(
    "loss,extra",
    [
        ("aot_unpaired", ["data.view=unpaired"]),
        ("aot_paired", ["loss.ot_batch_size=8", "train.per_device_train_batch_size=4"]),
        ("dpo", ["train.precompute_ref=true"]),
        ("ipo", ["model.lora=false"]),
    ],
    ids=["unpaired", "paired-two_pass", "dpo-precompute", "ipo-full_finetuning"],
)
def test_packed_run_trains_the_padded_runs_adapter(tmp_path, tiny_path, loss, extra):
    """Three SGD steps packed (the default) and padded: the same adapter, the same logged losses,
    and metrics.json says which layout ran and which attention kernel computed it. (Without
    dropout: a dropout mask is drawn over the batch's shape, so the layouts draw different ones;
    the two-pass replay of packed rows with dropout is checked in test_headline_regime.py.)"""
    from conftest import SGD, assert_same_weights

    common = [f"loss={loss}", *SGD, "train.max_steps=3", "train.logging_steps=1", *extra]
    packed = run(tmp_path / "packed", *common)
    padded = run(tmp_path / "padded", *common, "train.padding_free=false")
    assert packed["layout"]["padding_free"] is True
    assert packed["layout"]["packed_attention_calls"]["sdpa per sequence"] > 0  # the exact CPU kernel
    assert padded["layout"] == {
        "padding_free": False,
        "why_padded": "train.padding_free=false",
        "packed_attention_calls": {},
    }
    assert_same_weights(tmp_path / "packed", tmp_path / "padded", atol=1e-5)
    if "model.lora=false" in extra:  # full fine-tuning: the model itself moved
        from conftest import weights

        base, tuned = weights(tiny_path), weights(tmp_path / "packed")
        assert max((tuned[k].float() - base[k].float()).abs().max().item() for k in base if k in tuned) > 1e-4
    lp, lq = ([h["loss"] for h in m["log_history"] if "loss" in h] for m in (packed, padded))
    assert lp == pytest.approx(lq, abs=1e-5) and len(lp) == 3
