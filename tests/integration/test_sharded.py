"""FSDP2 and DeepSpeed ZeRO-3 for real on 2 CPU processes (gloo), against one process.

Each group of cases runs in one `accelerate launch` of tests/helpers/sharded_cases.py with the repo's
`*_cpu` launch config. Every run asserts what actually ran (backend, processes, share of the
parameters per rank, from metrics.json and the log), not only the numbers: accelerate falls
back to plain data parallel on a CPU without a word, and then the numbers would match too.
Oracles: one process on the same global batch, under SGD (an update is lr x gradient), 1e-5.
"""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from conftest import (
    INTERRUPTIBLE,
    REPO,
    SGD,
    assert_same_weights,
    compose,
    signal_last_rank,
    wait_for_checkpoint,
    weights,
)

from aot.run import train

pytestmark = pytest.mark.slow
# logging_steps=1: every step's loss is gathered over the ranks (the Trainer's final train_loss
# adds rank 0's own loss for steps since the last log).
STEPS = ["train.max_steps=2", "data.max_test_samples=16", "train.logging_steps=1"]
# name: (overrides for both, per-device batch on each of 2 ranks, batch of the one-process oracle)
CASES = {
    "aot_unpaired": (["loss=aot_unpaired"], ["train.per_device_train_batch_size=8"], 16),
    "aot_paired": (["loss=aot_paired", "loss.sort=soft"], ["train.per_device_train_batch_size=8"], 16),
    "dpo": (["loss=dpo"], ["train.per_device_train_batch_size=8"], 16),
    "full": (["loss=aot_unpaired", "model.lora=false"], ["train.per_device_train_batch_size=8"], 16),
    # The two-pass step: 32 rows per rank in micro-batches of 8 == one pass over 64 rows.
    "two_pass": (
        ["loss=aot_unpaired"],
        ["train.per_device_train_batch_size=8", "loss.ot_batch_size=32"],
        64,
    ),
    # ... and with gradient accumulation: 2 OT batches of 64 rows per optimizer step.
    "two_pass_ga2": (
        ["loss=aot_unpaired", "train.gradient_accumulation_steps=2"],
        ["train.per_device_train_batch_size=8", "loss.ot_batch_size=32"],
        64,
    ),
    # Reference log-probs precomputed (sharded over the ranks) == the live reference.
    "precompute": (
        ["loss=aot_unpaired"],
        ["train.per_device_train_batch_size=8", "train.precompute_ref=true", "train.logging_steps=1"],
        16,
    ),
}


def accelerate(config: str, script_args: list[str], env: dict | None = None, **kw):
    cmd = [
        os.path.join(os.path.dirname(sys.executable), "accelerate"),
        "launch",
        "--config_file",
        os.path.join(REPO, "configs", "accelerate", f"{config}.yaml"),
        *script_args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "AOT_SHARD_ON_CPU": "1", **(env or {})}
    return cmd, env


def run_cases(config: str, tmp_path, names: list[str], env=None):
    cases = [
        json.dumps([f"output_dir={tmp_path / config / name}", *STEPS, *SGD, *CASES[name][0], *CASES[name][1]])
        for name in names
    ]
    cmd, env = accelerate(config, ["tests/helpers/sharded_cases.py", *cases], env)
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=1200)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-4000:])
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, tiny_path):
    """The one-process oracle of each case, trained on demand and kept for the module."""
    root, done = tmp_path_factory.mktemp("one"), {}

    def get(name: str) -> tuple:
        shared, _, batch = CASES[name]
        key = (tuple(shared), batch)
        if key not in done:
            out = root / f"{name}"
            metrics = train(
                compose(
                    f"output_dir={out}", *STEPS, *SGD, *shared, f"train.per_device_train_batch_size={batch}"
                )
            )
            done[key] = (out, metrics)
        return done[key]

    return get


def assert_close(a, b, path=""):
    """Nested metrics equal to 1e-5 (numbers) or exactly (everything else)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            assert_close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, float):
        assert a == pytest.approx(b, abs=1e-5), path
    else:
        assert a == b, path


def check_against_one_process(out, oracle, backend: str):
    one_dir, one = oracle
    m = json.loads((out / "metrics.json").read_text())
    d = m["distributed"]
    assert d["backend"] == backend and d["processes"] == 2
    assert 0.4 < d["params_per_rank"] < 0.6  # really sharded: about half of every tensor per rank
    if "model.lora=false" in CASES[out.name][0]:  # the frozen reference, after its last forward
        assert 0.4 < d["reference_params_per_rank"] < 0.6
    losses = lambda h: [x["loss"] for x in h if "loss" in x]  # noqa: E731
    assert losses(m["log_history"]) == pytest.approx(losses(one["log_history"]), abs=1e-5)
    for key in ("rewards/accuracies", "rewards/margins", "rewards/chosen"):  # over every rank's rows
        got = [h[key] for h in m["log_history"] if key in h]
        assert got and got == pytest.approx([h[key] for h in one["log_history"] if key in h], abs=1e-6), key
    assert_same_weights(out, one_dir)
    # Diagnostics through the sharded model (rows split over the ranks) == one process.
    assert_close(m["eval_before"], one["eval_before"])
    assert_close(m["eval_after"], one["eval_after"])


def test_fsdp2_on_two_cpu_processes_equals_one_process(tmp_path, one_process, tiny_path):
    names = ["aot_unpaired", "aot_paired", "dpo", "full", "two_pass", "precompute"]
    cache = tmp_path / "cache"  # a fresh reference-log-prob cache with the tiny model in it
    cache.mkdir()
    (cache / tiny_path.name).symlink_to(tiny_path)
    log = run_cases("fsdp_cpu", tmp_path, names, env={"AOT_CACHE_DIR": str(cache)})
    assert "distributed: FSDP2 (fully_shard), 2 processes on cpu, 50% of parameters per rank" in log
    assert "reference log-probs: computed for 1200 rows on 2 ranks" in log
    assert len(list((cache / "ref_logps").glob("*.pt"))) == 1
    oracle = {"precompute": "aot_unpaired"}
    for name in names:
        check_against_one_process(
            tmp_path / "fsdp_cpu" / name, one_process(oracle.get(name, name)), "FSDP2 (fully_shard)"
        )


def test_zero3_on_two_cpu_processes_equals_one_process(tmp_path, one_process, tiny_path):
    names = ["aot_unpaired", "aot_paired", "dpo", "full", "two_pass_ga2", "precompute"]
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / tiny_path.name).symlink_to(tiny_path)
    log = run_cases("deepspeed_zero3_cpu", tmp_path, names, env={"AOT_CACHE_DIR": str(cache)})
    assert "distributed: DeepSpeed ZeRO-3, 2 processes on cpu" in log
    oracle = {"precompute": "aot_unpaired"}
    for name in names:
        check_against_one_process(
            tmp_path / "deepspeed_zero3_cpu" / name, one_process(oracle.get(name, name)), "DeepSpeed ZeRO-3"
        )


def test_fsdp2_bf16_with_a_reference_pass_first(tmp_path, tiny_path):
    # The precompute makes the reference (adapter bypassed) the model's first forward; FSDP2
    # records trainable parameters then. Training must still run, in bf16 mixed precision.
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / tiny_path.name).symlink_to(tiny_path)
    out = tmp_path / "bf16"
    args = [f"output_dir={out}", *STEPS, *SGD, "loss=aot_unpaired", "train.per_device_train_batch_size=8"]
    cmd, env = accelerate(
        "fsdp_cpu",
        [
            "--mixed_precision",
            "bf16",
            "scripts/train.py",
            *args,
            "train.precompute_ref=true",
            "train.logging_steps=1",
        ],
        {"AOT_CACHE_DIR": str(cache)},
    )
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    m = json.loads((out / "metrics.json").read_text())
    assert (
        m["distributed"]["backend"] == "FSDP2 (fully_shard)" and m["distributed"]["mixed_precision"] == "bf16"
    )
    losses = [h["loss"] for h in m["log_history"] if "loss" in h]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    moved = max(w.abs().max().item() for k, w in weights(out).items() if "lora_B" in k)
    assert moved > 1e-3


def test_sigterm_and_resume_under_fsdp2_give_the_uninterrupted_adapter(tmp_path, tiny_path):
    out = tmp_path / "run"
    args = [f"output_dir={out}", *INTERRUPTIBLE]  # the recipe's AdamW: its state is saved and restored too
    cmd, env = accelerate("fsdp_cpu", ["scripts/train.py", *args])
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    wait_for_checkpoint(proc, out / "checkpoint-5")
    signal_last_rank(proc, signal.SIGTERM)  # one rank: the stop is all-reduced, both checkpoint
    log, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, log[-3000:]
    assert "distributed: FSDP2 (fully_shard)" in log
    step = int(log.split("stopped on request at step ")[1].split()[0])
    assert 5 <= step < 60 and (out / f"checkpoint-{step}" / "trainer_state.json").is_file()
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming from {out / f'checkpoint-{step}'}" in again.stdout + again.stderr
    straight = tmp_path / "straight"
    train(compose(f"output_dir={straight}", *args[1:], "train.per_device_train_batch_size=16"))
    assert_same_weights(out, straight)
    # The resumed run reports the diagnostics of the run's start, not of the checkpoint.
    before = json.loads((out / "metrics.json").read_text())["eval_before"]
    assert (
        before["reward_accuracy"]
        == json.loads((straight / "metrics.json").read_text())["eval_before"]["reward_accuracy"]
    )


@pytest.mark.parametrize(
    "config,cpu_config", [("fsdp", "fsdp_cpu"), ("deepspeed_zero3", "deepspeed_zero3_cpu")]
)
def test_a_gpu_launch_config_on_a_cpu_machine_is_refused(tmp_path, config, cpu_config):
    cmd, env = accelerate(
        config, ["--num_processes", "2", "scripts/train.py", f"output_dir={tmp_path}", *STEPS]
    )
    env.pop("AOT_SHARD_ON_CPU")
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
    assert proc.returncode != 0
    assert "has no CUDA device" in proc.stderr and f"configs/accelerate/{cpu_config}.yaml" in proc.stderr
    assert not (tmp_path / "metrics.json").exists()
