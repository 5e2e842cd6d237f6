"""Scale-out: multi-process runs through the launcher, the two-pass step, preemption and
resume, precomputed reference log-probs, launch configs (Slurm: test_slurm.py; FSDP and
ZeRO-3: test_sharded.py).

Parameter updates are compared under SGD, where an update is exactly lr x gradient (Adam's first
step would hide a gradient scale error behind its normalisation)."""

import os
import signal
import subprocess
import sys

import pytest
import torch
import yaml
from conftest import (
    INTERRUPTIBLE,
    REPO,
    SGD,
    adapter,
    assert_same_weights,
    compose,
    signal_last_rank,
    wait_for_checkpoint,
)

from aot.config import ConfigError, ot_batch_line
from aot.run import train


def launch(*args, nproc=None, env=None, **kw):
    cmd = [
        os.path.join(os.path.dirname(sys.executable), "accelerate"),
        "launch",
        "--config_file",
        os.path.join(REPO, "configs", "accelerate", "cpu.yaml"),
    ]
    cmd += ["--num_processes", str(nproc)] if nproc else []
    return subprocess.run(
        cmd + ["scripts/train.py", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
        env={**os.environ, **(env or {})},
        **kw,
    )


@pytest.mark.slow
@pytest.mark.parametrize("extra", [["loss=aot_unpaired"], ["loss=aot_paired", "loss.sort=soft"]])
def test_two_processes_through_the_launcher_equal_one_process(tmp_path, tiny_path, extra):
    proc = launch(
        f"output_dir={tmp_path / 'ddp'}",
        "train.max_steps=2",
        "train.per_device_train_batch_size=8",
        *SGD,
        *extra,
        nproc=2,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "OT batch: 16 = 8 per device x 2 ranks x 1" in proc.stdout + proc.stderr
    one = train(
        compose(
            f"output_dir={tmp_path / 'one'}",
            "train.max_steps=2",
            "train.per_device_train_batch_size=16",
            *SGD,
            *extra,
        )
    )
    import json

    ddp = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    losses = lambda m: [h["loss"] for h in m["log_history"] if "loss" in h]  # noqa: E731
    assert ddp["train"]["train_loss"] == pytest.approx(one["train"]["train_loss"], abs=1e-5)
    assert_same_weights(tmp_path / "ddp", tmp_path / "one")
    assert losses(ddp) == pytest.approx(losses(one), abs=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize(
    "extra",
    [
        ["loss=aot_unpaired"],
        ["loss=aot_paired", "loss.penalty=squared_hinge", "loss.sort=soft"],
        ["loss=aot_unpaired", "data.view=unpaired"],
        ["loss=dpo"],
    ],
)
def test_two_pass_equals_one_pass_over_the_same_batch(tmp_path, tiny_path, extra):
    two = train(
        compose(
            f"output_dir={tmp_path / 'two'}",
            "train.max_steps=2",
            "loss.ot_batch_size=64",
            "train.per_device_train_batch_size=8",
            *SGD,
            *extra,
        )
    )
    one = train(
        compose(
            f"output_dir={tmp_path / 'one'}",
            "train.max_steps=2",
            "train.per_device_train_batch_size=64",
            *SGD,
            *extra,
        )
    )
    assert two["train"]["train_loss"] == pytest.approx(one["train"]["train_loss"], abs=1e-5)
    assert_same_weights(tmp_path / "two", tmp_path / "one")


@pytest.mark.slow
@pytest.mark.parametrize("replay", [True, False])
def test_two_pass_replays_dropout(tmp_path, tiny_path, monkeypatch, replay):
    """With LoRA dropout on, the two-pass gradient equals one graph over every micro-batch run
    from the same RNG state (the same masks); without the replay it does not, so the check can fail."""
    import aot.trainer as trainer_module
    from aot.arguments import build_training_args
    from aot.build import build_run
    from aot.data import load_split

    cfg = compose(
        f"output_dir={tmp_path}",
        "model.lora_dropout=0.3",
        "loss.ot_batch_size=32",
        "train.per_device_train_batch_size=8",
    )
    run = build_run(cfg, build_training_args(cfg), load_split(cfg.data, "train"))
    trainer, model = run.trainer, run.policy
    trainer.current_gradient_accumulation_steps = 1
    micro = next(iter(trainer.get_train_dataloader()))["micro_batches"]
    params = [p for p in model.parameters() if p.requires_grad]
    torch.manual_seed(0)  # a trained-looking adapter: with B = 0 dropout would not change the outputs
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.05)

    torch.manual_seed(123)
    start = torch.get_rng_state()
    if not replay:
        monkeypatch.setattr(trainer_module, "_set_rng_state", lambda state: None)
    trainer._two_pass_step(model, micro)
    two_pass = [p.grad.clone() for p in params]
    # The logged replay check (pass 2's log-probs against pass 1's) sees the same thing.
    (replay_error,) = trainer._metrics["train"]["two_pass/replay_error"]
    assert (replay_error == 0) == replay
    model.zero_grad()

    torch.set_rng_state(start)  # one graph: the same draws, in the same order, as pass 1
    logps, refs, lengths = [], [], []
    for mb in micro:
        lp, n = trainer_module.sequence_logps(model, mb)
        logps.append(lp)
        lengths.append(n)
        refs.append(trainer.reference_logps(mb))
    merged = {"is_chosen": torch.cat([mb["is_chosen"] for mb in micro]), "paired": micro[0]["paired"]}
    loss, _ = trainer_module.preference_loss(
        trainer.method, torch.cat(logps), torch.cat(refs), torch.cat(lengths), merged, trainer.loss_kwargs
    )
    loss.backward()
    same = all(torch.allclose(a, p.grad, rtol=0, atol=1e-6) for a, p in zip(two_pass, params))
    assert same == replay
    assert max(g.abs().max().item() for g in two_pass) > 1e-4  # a real gradient, not zeros


def test_ot_batch_line_and_checks():
    cfg = compose("train.per_device_train_batch_size=8", "loss.ot_batch_size=256")
    assert ot_batch_line(cfg, 2) == "OT batch: 512 = 8 per device x 2 ranks x 32 (two-pass step)"
    assert ot_batch_line(compose("loss.ot_batch=local", "train.per_device_train_batch_size=8"), 4) == (
        "OT batch: 8 = 8 per device x 1 rank x 1 (local: each of 4 ranks sorts its own)"
    )
    with pytest.raises(ConfigError, match="multiple of"):
        train(compose("train.per_device_train_batch_size=8", "loss.ot_batch_size=12"))
    with pytest.raises(ConfigError, match="global or local"):
        train(compose("loss.ot_batch=world"))


@pytest.mark.slow
def test_sigterm_checkpoints_and_the_same_command_resumes(tmp_path, tiny_path):
    args = ["scripts/train.py", "train.max_steps=60", "train.save_steps=5", "data.max_test_samples=8"]
    straight = tmp_path / "straight"
    done = subprocess.run(
        [sys.executable, *args, f"output_dir={straight}"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]

    out = tmp_path / "interrupted"
    cmd = [sys.executable, *args, f"output_dir={out}"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for_checkpoint(proc, out / "checkpoint-5")
    proc.send_signal(signal.SIGTERM)
    log, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, log[-2000:]
    assert "stopped on request at step" in log
    step = int(log.split("stopped on request at step ")[1].split()[0])
    assert 5 <= step < 60 and (out / f"checkpoint-{step}").is_dir()
    assert not (out / "adapter_model.safetensors").exists()  # no final model yet

    again = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"resuming from {out / f'checkpoint-{step}'}" in again.stdout + again.stderr
    wa, wb = adapter(out), adapter(straight)
    for k in wa:
        assert torch.allclose(wa[k], wb[k], rtol=0, atol=1e-5), k


@pytest.mark.slow
def test_precomputed_reference_gives_the_same_losses(tmp_path, tiny_path, monkeypatch):
    monkeypatch.setenv("AOT_CACHE_DIR", str(tmp_path / "cache"))  # a fresh reference cache...
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / tiny_path.name).symlink_to(tiny_path)  # ...with the tiny model already built
    base = ["train.max_steps=3", "train.per_device_train_batch_size=8", *SGD]
    live = train(compose(f"output_dir={tmp_path / 'live'}", *base))
    pre = train(compose(f"output_dir={tmp_path / 'pre'}", "train.precompute_ref=true", *base))
    losses = lambda m: [h["loss"] for h in m["log_history"] if "loss" in h]  # noqa: E731
    assert losses(pre) == pytest.approx(losses(live), abs=1e-5)
    assert_same_weights(tmp_path / "pre", tmp_path / "live")
    cached = sorted((tmp_path / "cache" / "ref_logps").glob("*.pt"))
    assert len(cached) == 1
    # Reused when nothing changed; a new key when the tokenisation changes.
    train(compose(f"output_dir={tmp_path / 'pre2'}", "train.precompute_ref=true", *base))
    assert sorted((tmp_path / "cache" / "ref_logps").glob("*.pt")) == cached
    train(
        compose(
            f"output_dir={tmp_path / 'pre3'}", "train.precompute_ref=true", "train.max_prompt_length=6", *base
        )
    )
    assert len(list((tmp_path / "cache" / "ref_logps").glob("*.pt"))) == 2


@pytest.mark.parametrize("name", ["fsdp", "deepspeed_zero3", "ddp", "cpu", "fsdp_cpu", "deepspeed_zero3_cpu"])
def test_launch_configs_parse(name):
    from accelerate.commands.config.config_args import load_config_from_file

    path = os.path.join(REPO, "configs", "accelerate", f"{name}.yaml")
    cfg = load_config_from_file(path)
    raw = yaml.safe_load(open(path))
    assert cfg.num_processes == raw["num_processes"] == (2 if "cpu" in name else 8)
    if name.startswith("fsdp"):  # the GPU config runs the FSDP2 code that fsdp_cpu tests
        assert raw["fsdp_config"]["fsdp_version"] == 2 and raw["fsdp_config"]["fsdp_reshard_after_forward"]
        assert raw["fsdp_config"]["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"


@pytest.mark.slow
def test_a_signal_to_one_rank_stops_every_rank_at_the_same_step(tmp_path, tiny_path):
    out = tmp_path / "run"
    args = [f"output_dir={out}", *INTERRUPTIBLE]
    cmd = [
        os.path.join(os.path.dirname(sys.executable), "accelerate"),
        "launch",
        "--config_file",
        os.path.join(REPO, "configs", "accelerate", "cpu.yaml"),
        "scripts/train.py",
        *args,
    ]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for_checkpoint(proc, out / "checkpoint-5")
    signal_last_rank(proc, signal.SIGTERM)  # rank 1 only
    log, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, log[-2000:]  # no rank hung or died: both stopped at one step
    step = int(log.split("stopped on request at step ")[1].split()[0])
    assert (out / f"checkpoint-{step}" / "trainer_state.json").is_file()
    again = launch(*args, nproc=2)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"resuming from {out / f'checkpoint-{step}'}" in again.stdout + again.stderr
    assert (out / "adapter_model.safetensors").is_file()


def test_one_process_on_a_multi_gpu_node_trains_on_one_device_not_dataparallel(tmp_path, tiny_path, caplog):
    """transformers gives a process launched without a launcher n_gpu = device_count() and wraps
    the model in nn.DataParallel, whose replicas would each run the output head on a slice of the
    rows. Simulated here by the n_gpu that TrainingArguments computes on a node with 2 GPUs."""
    from aot.arguments import build_training_args
    from aot.build import build_run
    from aot.data import load_split

    cfg = compose(f"output_dir={tmp_path}", "train.per_device_train_batch_size=8")
    args = build_training_args(cfg)
    args._n_gpu = 2  # TrainingArguments._setup_devices: self._n_gpu = torch.cuda.device_count()
    with caplog.at_level("WARNING", logger="aot"):
        trainer = build_run(cfg, args, load_split(cfg.data, "train")).trainer
    assert trainer.args.n_gpu == 1 and "one process uses one GPU (cuda:0) of the 2 it sees" in caplog.text
    assert not isinstance(trainer._wrap_model(trainer.model), torch.nn.DataParallel)


@pytest.mark.parametrize(
    "launched,setting,expected", [("bf16", "auto", True), ("no", "auto", False), ("bf16", "false", None)]
)
def test_train_bf16_follows_the_launch_config(monkeypatch, launched, setting, expected):
    from aot.arguments import use_bf16
    from aot.config import check_config

    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", launched)
    cfg = compose(f"train.bf16={setting}")
    if expected is None:
        with pytest.raises(ConfigError, match="mixed_precision: bf16"):
            check_config(cfg)
    else:
        check_config(cfg)
        assert use_bf16(cfg) is expected


@pytest.mark.slow
def test_two_processes_fetch_a_hub_model_once(tmp_path, tiny_path):
    """Downloads are main-process-first: on a cold cache the first process of the node fetches
    the hub repository, the other reads the cache (8 GPUs x 14 GB downloads otherwise). The Hub
    is a stand-in serving the tiny model as `standin/tiny` (tests/helpers/standin_hub.py)."""
    from helpers.standin_hub import standin_hub

    with standin_hub({"standin/tiny": tiny_path}) as (endpoint, requests):
        env = {"HF_ENDPOINT": endpoint, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "0"}
        proc = launch(
            f"output_dir={tmp_path / 'run'}",
            "model.name_or_path=standin/tiny",
            "train.max_steps=1",
            "data.max_test_samples=8",
            "train.per_device_train_batch_size=8",
            nproc=2,
            env={**env, "OMP_NUM_THREADS": "1"},
        )
    assert proc.returncode == 0, proc.stderr[-3000:]
    downloads = [path for method, path in requests if method == "GET" and "/resolve/" in path]
    assert "/standin/tiny/resolve/" in " ".join(downloads) and any(
        p.endswith("model.safetensors") for p in downloads
    )
    assert len(requests) == len(set(requests)), sorted(requests)  # every request made once: by one process
