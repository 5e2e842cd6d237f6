"""Forward+backward time of ``aot_loss`` against TRL's inline AOT formula.

    make bench-loss            # or: python benchmarks/bench_loss.py [--quick]

For each n, u and v hold n values each (the unpaired row "hard n/n+1" has m = n + 1 to show
the exact merged-grid path). Each time is the median over repeats of one forward + backward,
measured side by side in this one run. Writes benchmarks/results/loss.json.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from aot.losses import aot_loss
from aot.sorting import SINKHORN_MAX_N

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, write  # noqa: E402

BETA = 0.01
SIZES = [64, 128, 1024, 4096, 16384, 262144]


def trl_inline(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """TRL 1.16's inline ``aot_unpaired`` formula (sort both, subtract, logistic), as a baseline."""
    delta = torch.sort(u, dim=0)[0] - torch.sort(v, dim=0)[0]
    return (-F.logsigmoid(BETA * delta)).mean()


CASES = {
    "trl_inline": lambda u, v: trl_inline(u, v),
    "hard": lambda u, v: aot_loss(u, v, beta=BETA),
    "hard n/n+1": lambda u, v: aot_loss(u, v, beta=BETA),
    "soft_pav": lambda u, v: aot_loss(u, v, beta=BETA, sort="soft"),
    "soft_sinkhorn": lambda u, v: aot_loss(u, v, beta=BETA, sort="sinkhorn"),
}


def time_cases(cases: dict, n: int, budget_s: float, min_reps: int = 5) -> dict[str, float]:
    """Median seconds of one forward + backward per case, the cases interleaved round-robin so
    that drift in the machine's speed hits them all alike."""
    g = torch.Generator().manual_seed(n)
    inputs = {}
    for name in cases:
        m = n + 1 if name.endswith("n/n+1") else n
        inputs[name] = (
            (torch.randn(n, generator=g) * 10).requires_grad_(),
            (torch.randn(m, generator=g) * 10).requires_grad_(),
        )
        cases[name](*inputs[name]).backward()  # warm-up (also fills the quantile-grid cache, as in training)
    times = {name: [] for name in cases}
    start = time.perf_counter()
    reps = 0
    while reps < min_reps or (time.perf_counter() - start < budget_s and reps < 2000):
        reps += 1
        for name, fn in cases.items():
            u, v = inputs[name]
            t0 = time.perf_counter()
            fn(u, v).backward()
            times[name].append(time.perf_counter() - t0)
            u.grad = v.grad = None
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes and short budgets (smoke run)")
    parser.add_argument("--out")
    args = parser.parse_args()
    sizes = SIZES[:2] if args.quick else SIZES
    budget = 0.2 if args.quick else 2.0

    rows = []
    for n in sizes:
        # Sinkhorn is timed on its own: its O(n^2) allocations would slow whichever case follows it.
        fast = {k: f for k, f in CASES.items() if k != "soft_sinkhorn"}
        timed = time_cases(fast, n, budget * len(fast))
        if n <= SINKHORN_MAX_N:
            timed.update(time_cases({"soft_sinkhorn": CASES["soft_sinkhorn"]}, n, budget, min_reps=3))
        for name, sec in timed.items():
            m = n + 1 if name.endswith("n/n+1") else n
            rows.append(
                {
                    "case": name,
                    "n": n,
                    "m": m,
                    "ms": sec * 1e3,
                    "ns_per_nlogn": sec * 1e9 / (n * math.log2(n)),
                }
            )
    base = {r["n"]: r["ms"] for r in rows if r["case"] == "trl_inline"}
    for r in rows:
        r["vs_trl_inline"] = r["ms"] / base[r["n"]]

    print(f"{'case':<14} {'n':>7} {'ms':>10} {'x trl':>7} {'ns/(n log2 n)':>14}")
    for r in rows:
        print(
            f"{r['case']:<14} {r['n']:>7} {r['ms']:>10.3f} {r['vs_trl_inline']:>7.2f} {r['ns_per_nlogn']:>14.2f}"
        )

    result = {"machine": machine(), "beta": BETA, "sinkhorn_max_n": SINKHORN_MAX_N, "rows": rows}
    write("loss.json", result, args.out)


if __name__ == "__main__":
    main()
