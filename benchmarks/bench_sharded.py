"""What a sharded run costs a node: host memory at load and checkpoint bytes and seconds per rank.

    make bench-sharded        # or: python benchmarks/bench_sharded.py [--out FILE]

SmolLM2-135M-Instruct under FSDP2 on 2 CPU processes (configs/accelerate/fsdp_cpu.yaml) with bf16
mixed precision and bf16 weights as the 7B recipes (trainable parameters upcast to float32 master
weights), two pairs of up to 32 tokens per rank and step (bf16 products are slow on this CPU; no byte
count depends on it), LoRA and full fine-tuning, with
``fsdp_cpu_ram_efficient_loading`` true (accelerate moves the model to the meta device before
sharding and broadcasts rank 0's tensors into the shards) and false (the configs' setting: every
rank shards its own copy). Two steps with a checkpoint after each. Recorded per rank: peak resident memory once
the model is sharded (weights, upcast and libraries), the seconds each checkpoint took, and the
bytes of the last checkpoint (the rank's shard file; rank 0 also the small replicated files and,
with LoRA, the gathered adapter). Then the same bytes for a 7B Mistral-shaped model on 8 ranks,
from its parameter counts and the bytes per parameter measured here.
Writes benchmarks/results/sharded.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import LIVE_MEMORY, RESULTS, machine  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RUN = [
    "model=smollm2",
    "model.dtype=bfloat16",
    "train.max_steps=2",
    "train.save_steps=1",
    "train.per_device_train_batch_size=2",
    "train.per_device_eval_batch_size=2",
    "train.max_length=32",
    "train.max_prompt_length=16",
    "data.max_test_samples=2",
]


def lora_params(layers, hidden, intermediate, kv, r=16) -> int:
    """LoRA r on q, k, v, o, gate, up, down: r x (in + out) per projection."""
    shapes = [(hidden, hidden), (hidden, kv), (hidden, kv), (hidden, hidden)]
    shapes += [(hidden, intermediate), (hidden, intermediate), (intermediate, hidden)]
    return layers * sum(r * (i + o) for i, o in shapes)


#: SmolLM2-135M (measured here) and Mistral-7B (extrapolated): layers, hidden, intermediate, kv width, all params
SMOLLM2 = {"params": 134_515_008, "lora": lora_params(30, 576, 1536, 192)}
MISTRAL_7B = {"params": 7_241_732_096, "lora": lora_params(32, 4096, 14336, 1024)}


def run_case(lora: bool, efficient: bool, root: Path) -> dict:
    config = (REPO / "configs/accelerate/fsdp_cpu.yaml").read_text()
    config = config.replace(
        "fsdp_cpu_ram_efficient_loading: false", f"fsdp_cpu_ram_efficient_loading: {str(efficient).lower()}"
    )
    (root / "fsdp.yaml").write_text(config)
    out = root / "run"
    cmd = [
        str(Path(sys.executable).parent / "accelerate"),
        "launch",
        "--config_file",
        str(root / "fsdp.yaml"),
        "--mixed_precision",
        "bf16",
        "scripts/train.py",
        f"output_dir={out}",
        f"model.lora={str(lora).lower()}",
        *RUN,
    ]
    env = {**os.environ, **LIVE_MEMORY, "OMP_NUM_THREADS": "1", "AOT_SHARD_ON_CPU": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    m = json.loads((out / "metrics.json").read_text())
    ckpt = out / "checkpoint-2"
    shards = {int(p.name[10:15]): p.stat().st_size for p in ckpt.glob("shard-rank*.pt")}
    replicated = sum(
        p.stat().st_size for p in ckpt.iterdir() if p.is_file() and not p.name.startswith("shard-")
    )
    return {
        "lora": lora,
        "efficient_loading": efficient,
        "peak_host_rss_gb_per_rank": m["distributed"]["peak_host_rss_gb_per_rank"],
        "checkpoint_seconds_per_rank": m["checkpoint_seconds_per_rank"],
        "shard_bytes_per_rank": [shards[r] for r in sorted(shards)],
        "rank0_other_bytes": replicated,
    }


def extrapolate(rows: list[dict]) -> dict:
    """Checkpoint bytes per rank of a 7B model on 8 ranks, from the bytes per trained parameter
    measured here (fp32 weight + two fp32 Adam moments = 12 bytes, plus pickling overhead)."""
    out = {}
    for row in rows:
        if not row["efficient_loading"]:
            continue
        kind = "lora" if row["lora"] else "full"
        trained = SMOLLM2[kind] if kind == "lora" else SMOLLM2["params"]
        per_param = sum(row["shard_bytes_per_rank"]) / trained
        big = MISTRAL_7B[kind] if kind == "lora" else MISTRAL_7B["params"]
        out[kind] = {
            "bytes_per_trained_param": round(per_param, 2),
            "gb_per_rank_8_ranks": round(per_param * big / 8 / 1e9, 3),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(RESULTS / "sharded.json"))
    a = parser.parse_args()
    rows = []
    for lora in (True, False):
        for efficient in (True, False):
            with tempfile.TemporaryDirectory() as root:
                row = run_case(lora, efficient, Path(root))
            print(json.dumps(row), flush=True)
            rows.append(row)
    result = {
        "machine": machine(),
        "rows": rows,
        "mistral_7b": extrapolate(rows),
        "smollm2": SMOLLM2,
        "mistral_7b_params": MISTRAL_7B,
    }
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["mistral_7b"], indent=2))


if __name__ == "__main__":
    main()
