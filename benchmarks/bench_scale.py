"""The OT batch beyond one micro-batch: the two-pass step against plain batches, and the
precomputed reference.

    make bench-scale          # or: python benchmarks/bench_scale.py [--samples 1024] [--rounds 2] [--only tiny|smollm2]

SmolLM2-135M-Instruct (``real_model_rows``): the two-pass step over 32 rows in micro-batches of 8
against a plain batch of the same 32 rows, alternating, medians over rounds; target: at most
1.5x the plain batch's time per sample.

Tiny model, AOT unpaired on the sample set's paired rows, LoRA. For OT batch N in 8, 64, 256,
1024: a plain batch of N rows, and the two-pass step over N rows in micro-batches of M (8, as in
the tests, and 64, where the per-sample cost of a plain batch has levelled off on this CPU, as a
GPU micro-batch sized to its memory would have). Then one
LoRA step (batch 16 and 64) with reference log-probs computed each step or precomputed. Each
measurement runs in a fresh subprocess; the first step is a warm-up and not timed. Memory: on
CUDA the peak allocated bytes; on the CPU the peak RSS above the process's RSS just before
training (weights, data and libraries excluded), with glibc returning large blocks at once.
Writes benchmarks/results/scale.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import alternate, machine, medians, rss_bytes  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
OT_BATCHES = [8, 64, 256, 1024]
MICROS = [8, 64]


def measure(mode: str, n: int, samples: int, precompute: bool, micro: int, model: str = "tiny") -> dict:
    import torch
    from transformers import TrainerCallback

    from aot.arguments import build_training_args
    from aot.build import build_run
    from aot.config import compose
    from aot.data import load_split

    steps = 1 + max(2, samples // n)
    overrides = [
        f"model={model}",
        "loss=aot_unpaired",
        f"output_dir={tempfile.mkdtemp()}",
        f"train.max_steps={steps}",
        "train.logging_steps=100000",
        f"train.precompute_ref={str(precompute).lower()}",
    ]
    if mode == "two_pass":
        overrides += [f"train.per_device_train_batch_size={micro}", f"loss.ot_batch_size={n}"]
    else:
        overrides += [f"train.per_device_train_batch_size={n}"]
    cfg = compose(*overrides)
    args = build_training_args(cfg)
    args.save_strategy, args.dataloader_drop_last = "no", True
    trainer = build_run(cfg, args, load_split(cfg.data, "train")).trainer

    class Clock(TrainerCallback):
        times: list = []

        def on_step_begin(self, *a, **k):
            self.start = time.perf_counter()

        def on_step_end(self, *a, **k):
            self.times.append(time.perf_counter() - self.start)

    clock = Clock()
    trainer.add_callback(clock)
    cuda = torch.cuda.is_available()
    base = rss_bytes()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    timed = clock.times[1:]
    peak = (
        torch.cuda.max_memory_allocated()
        if cuda
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    )
    return {
        "model": model,
        "mode": mode,
        "ot_batch": n,
        "micro_batch": micro if mode == "two_pass" else n,
        "precompute_ref": precompute,
        "timed_steps": len(timed),
        "ms_per_sample": 1e3 * sum(timed) / (len(timed) * n),
        "ms_per_step": 1e3 * sum(timed) / len(timed),
        "peak_mb": peak / 2**20,
        "peak_kind": "cuda_max_allocated" if cuda else "cpu_rss_above_start",
    }


def child(
    mode: str,
    n: int,
    samples: int,
    precompute: bool,
    micro: int = 8,
    memory: bool = False,
    model: str = "tiny",
) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        mode,
        str(n),
        str(samples),
        str(int(precompute)),
        str(micro),
        model,
    ]
    env = dict(os.environ)
    if memory:
        # glibc: serve allocations over 64 KiB by mmap, returned to the OS when freed, so that peak
        # RSS follows the peak of live tensors rather than the allocator's high-water mark. It
        # slows the run, so times come from a separate run without it.
        env.update(MALLOC_MMAP_THRESHOLD_="65536", MALLOC_ARENA_MAX="2")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        sys.exit(f"{mode} {n} failed:\n{proc.stderr[-4000:]}")
    return json.loads(next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))[7:])


#: SmolLM2: OT batch (rows) and micro-batch of the two-pass step, and rows timed per run (two
#: timed steps after a warm-up). 32 rows x up to 128 tokens through a 135M model are matrix
#: products of 64 x 128 x 576 and up: the per-sample cost has levelled off, as on a GPU.
REAL_OT, REAL_MICRO, REAL_SAMPLES = 32, 8, 64
#: the two-pass step's time per sample against a plain batch of the same size
REAL_TARGET = 1.5


def real_model_rows(rounds: int) -> dict:
    """SmolLM2: a plain batch of REAL_OT rows against the two-pass step over the same rows in
    micro-batches of REAL_MICRO, alternating; medians over rounds."""
    from aot.fixtures import ensure_smollm2

    ensure_smollm2()
    cases = {"plain": ("plain", REAL_OT), "two_pass": ("two_pass", REAL_MICRO)}
    runs = alternate(
        cases, rounds, lambda c: child(c[0], REAL_OT, REAL_SAMPLES, False, c[1], model="smollm2")
    )
    summary = {mode: medians(rs, ("ms_per_sample", "peak_mb")) for mode, rs in runs.items()}
    ratio = summary["two_pass"]["ms_per_sample"] / summary["plain"]["ms_per_sample"]
    return {
        "ot_batch": REAL_OT,
        "micro_batch": REAL_MICRO,
        "rounds": rounds,
        "runs": runs,
        "summary": summary,
        "time_vs_plain": ratio,
        "target": {"two_pass_time_vs_plain <= 1.5": {"value": ratio, "met": ratio <= REAL_TARGET}},
        "machine": machine(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--samples", type=int, default=1024, help="rows timed per configuration (at least 2 steps)"
    )
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "scale.json"))
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of the SmolLM2 comparison")
    parser.add_argument(
        "--only", choices=["tiny", "smollm2"], help="run one part only (the other is kept from --out)"
    )
    parser.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, n, samples, pre, micro, model = args.child
        print("RESULT " + json.dumps(measure(mode, int(n), int(samples), bool(int(pre)), int(micro), model)))
        return
    previous = json.loads(Path(args.out).read_text()) if Path(args.out).is_file() else {}
    smollm2 = previous.get("smollm2")
    if args.only != "tiny":
        smollm2 = real_model_rows(args.rounds)
    if args.only == "smollm2":
        previous["smollm2"] = smollm2
        Path(args.out).write_text(json.dumps(previous, indent=2) + "\n")
        print(f"wrote {args.out}")
        return

    from aot.fixtures import build_tiny

    build_tiny()
    configs = [("plain", n, n) for n in OT_BATCHES]
    configs += [("two_pass", n, micro) for micro in MICROS for n in OT_BATCHES if n > micro]
    rows = []
    for mode, n, micro in configs:
        row = child(mode, n, args.samples, False, micro)
        row["peak_mb"] = child(mode, n, args.samples, False, micro, memory=True)["peak_mb"]
        rows.append(row)
    plain = {r["ot_batch"]: r for r in rows if r["mode"] == "plain"}
    for r in rows:
        r["peak_vs_micro"] = r["peak_mb"] / plain[r["micro_batch"]]["peak_mb"]
        r["time_vs_plain_same_size"] = r["ms_per_sample"] / plain[r["ot_batch"]]["ms_per_sample"]
    precompute = {}
    for batch in (16, 64):  # the tiny default batch, and one where compute outweighs per-step overhead
        runs = [child("plain", batch, args.samples, p) for p in (False, True, False, True)]
        live = min(r["ms_per_step"] for r in runs if not r["precompute_ref"])
        pre = min(r["ms_per_step"] for r in runs if r["precompute_ref"])
        precompute[str(batch)] = {
            "ms_per_step_live_ref": live,
            "ms_per_step_precomputed": pre,
            "speedup": live / pre,
        }
    result = {"machine": machine(), "rows": rows, "precompute": precompute, "smollm2": smollm2}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"{'mode':<9} {'OT':>5} {'micro':>5} {'ms/sample':>10} {'x plain':>8} {'peak MB':>9} {'x micro':>8}"
    )
    for r in rows:
        print(
            f"{r['mode']:<9} {r['ot_batch']:>5} {r['micro_batch']:>5} {r['ms_per_sample']:>10.3f} "
            f"{r['time_vs_plain_same_size']:>8.2f} {r['peak_mb']:>9.1f} {r['peak_vs_micro']:>8.2f}"
        )
    for batch, p in precompute.items():
        print(
            f"precomputed reference, batch {batch}: {p['ms_per_step_live_ref']:.1f} -> "
            f"{p['ms_per_step_precomputed']:.1f} ms per step ({p['speedup']:.2f}x)"
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
