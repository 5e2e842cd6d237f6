"""The tiny runs on 1 to 8 CUDA GPUs, with no download: bf16 runs on one GPU (AOT unpaired and
paired, the two-pass step, the precomputed reference) and, with 2 or more GPUs, under DDP, FSDP2
and DeepSpeed ZeRO-3 with the multi-process equality check (N processes x 8 rows == one process x
8N rows, float32, SGD). Called by benchmarks/gpu_check.sh after its more important checks; writes
gpu.json to --out after every run (run directories and logs stay in a temporary directory; a
failed run's log tail goes into gpu.json).

Each run is independent: a failure is recorded and the next run goes on.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
BF16 = ["model.dtype=bfloat16", "train.bf16=true"]
SGD = [
    "train.optim=sgd",
    "train.learning_rate=2.0",
    "train.warmup_steps=0",
    "train.lr_scheduler_type=constant",
    "train.save_steps=1000",
    "train.logging_steps=1",
    "data.max_test_samples=16",
    "train.max_steps=2",
]


def launcher(config: str | None, nproc: int, mixed_precision: str | None) -> list[str]:
    if config is None:
        return [PY]
    cmd = [PY, "-m", "accelerate.commands.launch", "--config_file", f"configs/accelerate/{config}.yaml"]
    cmd += ["--num_processes", str(nproc)]
    return cmd + (["--mixed_precision", mixed_precision] if mixed_precision else [])


WORK = Path(tempfile.mkdtemp(prefix="aot-gpu-check-"))


def run(name, out: Path, config, nproc: int, overrides: list[str], mixed_precision=None, timeout=240) -> dict:
    run_dir = WORK / "runs" / name
    cmd = [*launcher(config, nproc, mixed_precision), "scripts/train.py", f"output_dir={run_dir}", *overrides]
    started = time.time()
    try:
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
        code, log = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as e:
        code, log = (
            "timeout",
            (e.stdout or b"").decode(errors="replace") + (e.stderr or b"").decode(errors="replace"),
        )
    row = {
        "name": name,
        "launch": config or "python",
        "processes": nproc,
        "ok": code == 0,
        "exit": code,
        "seconds": round(time.time() - started, 1),
    }
    metrics = run_dir / "metrics.json"
    if code == 0 and metrics.is_file():
        m = json.loads(metrics.read_text())
        row.update(
            distributed=m.get("distributed"),
            train_steps_per_second=m["train"].get("train_steps_per_second"),
            reward_accuracy=[m["eval_before"]["reward_accuracy"], m["eval_after"]["reward_accuracy"]],
            fsd_violation=[m["eval_before"]["fsd_violation"], m["eval_after"]["fsd_violation"]],
        )
    else:
        row["log_tail"] = log[-1500:]
    print(f"{name}: {'ok' if row['ok'] else 'FAILED (' + str(code) + ')'} in {row['seconds']} s", flush=True)
    return row


def max_weight_diff(a: Path, b: Path) -> float:
    from safetensors.torch import load_file

    def load(p):
        for f in ("adapter_model.safetensors", "model.safetensors"):
            if (p / f).is_file():
                return load_file(str(p / f))
        raise FileNotFoundError(p)

    wa, wb = load(a), load(b)
    return max((wa[k].float() - wb[k].float()).abs().max().item() for k in wa)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "gpu"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import torch

    assert torch.cuda.is_available(), "no CUDA device"
    n = torch.cuda.device_count()
    machine = {
        "gpu": torch.cuda.get_device_name(),
        "gpus": n,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
    }
    result = {"machine": machine, "runs": [], "equality": None}

    def record(row: dict) -> dict:  # gpu.json is rewritten after every run: a cut-off check keeps its rows
        result["runs"].append(row)
        (out / "gpu.json").write_text(json.dumps(result, indent=2) + "\n")
        return row

    unpaired, paired = ["loss=aot_unpaired"], ["loss=aot_paired"]
    two_pass = ["loss=aot_unpaired", "loss.ot_batch_size=256", "train.per_device_train_batch_size=16"]
    record(run("single-aot_unpaired", out, None, 1, [*BF16, *unpaired, "train.max_steps=100"]))
    record(run("single-aot_paired", out, None, 1, [*BF16, *paired, "train.max_steps=100"]))
    record(run("single-two_pass", out, None, 1, [*BF16, *two_pass, "train.max_steps=20"]))
    precompute = [*BF16, *unpaired, "train.precompute_ref=true", "train.max_steps=100"]
    record(run("single-precompute", out, None, 1, precompute))
    if n >= 2:
        record(run("fsdp2-aot_unpaired", out, "fsdp", n, [*BF16, *unpaired, "train.max_steps=100"]))
        record(
            run("zero3-aot_unpaired", out, "deepspeed_zero3", n, [*BF16, *unpaired, "train.max_steps=100"])
        )
        # Equality, float32 (no mixed precision, TF32 off by default in torch): N processes of 8 rows
        # each under FSDP2 == one process of 8N rows, under SGD.
        fp32 = ["model.dtype=float32", "train.bf16=false", *unpaired, *SGD]
        sharded = record(
            run("equal-fsdp2", out, "fsdp", n, [*fp32, "train.per_device_train_batch_size=8"], "no")
        )
        one = record(run("equal-one", out, None, 1, [*fp32, f"train.per_device_train_batch_size={8 * n}"]))
        equality = {"processes": n, "ok": False}
        if sharded["ok"] and one["ok"]:
            diff = max_weight_diff(WORK / "runs" / "equal-fsdp2", WORK / "runs" / "equal-one")
            equality.update(max_abs_weight_diff=diff, ok=diff < 1e-4)
        result["equality"] = equality
        record(run("ddp-aot_unpaired", out, "ddp", n, [*BF16, *unpaired, "train.max_steps=100"]))
        record(run("fsdp2-two_pass", out, "fsdp", n, [*BF16, *two_pass, "train.max_steps=20"]))
        record(
            run(
                "fsdp2-full_finetune",
                out,
                "fsdp",
                n,
                [*BF16, *unpaired, "model.lora=false", "train.max_steps=50"],
            )
        )
        zero3_ga2 = [*BF16, *two_pass, "train.gradient_accumulation_steps=2", "train.max_steps=10"]
        record(run("zero3-two_pass_ga2", out, "deepspeed_zero3", n, zero3_ga2))
    rows = result["runs"]
    failed = [r["name"] for r in rows if not r["ok"]]
    print(f"{len(rows) - len(failed)}/{len(rows)} runs ok; equality: {result['equality']}; failed: {failed}")


if __name__ == "__main__":
    main()
