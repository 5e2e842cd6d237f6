"""Generation throughput of the default AlpacaEval path (Hugging Face ``generate``).

    make bench-generation     # or: python benchmarks/bench_generation.py [--rounds 2] [--answers 48]

SmolLM2-135M-Instruct as its own base row (``outputs/<id>-base``-style directory in a temporary
folder), greedy, 64 new tokens at most, on instructions of mixed length (1 to 6 of the sample
set's questions strung together). Two cases, alternating, medians over rounds:

- ``given_order_b8``: the instructions in their given order, 8 per batch (the path before);
- ``by_length_b16``: longest first, 16 per batch (the default on a CPU; 64 on a GPU).

Tokens per second count generated tokens (padding and what follows an end-of-sequence excluded).
Writes benchmarks/results/generation.json.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import alternate, machine, medians, write  # noqa: E402

CASES = {"given_order_b8": (False, 8), "by_length_b16": (True, 16)}


def instructions(n: int) -> list[dict]:
    from aot.data import SAMPLE_DIR, read_file

    questions = [r["prompt"] for r in read_file(SAMPLE_DIR / "paired_test.jsonl")]
    rng = random.Random(0)
    return [
        {
            "instruction": " ".join(rng.sample(questions, rng.randint(1, 6))),
            "output": "-",
            "generator": "ref",
            "dataset": "bench",
        }
        for _ in range(n)
    ]


def measure(case: str, records: list[dict], run_dir: Path, round_: int) -> dict:
    from evaluation.generation import generate, settings_for

    by_length, batch = CASES[case]
    settings = settings_for(
        "greedy", "hf", 64, instruction_set=f"bench-{case}-{round_}"
    )  # a fresh file each time
    started = time.perf_counter()
    path = generate(run_dir, records, settings, batch_size=batch, by_length=by_length)
    stats = json.loads(path.with_suffix(".generation.json").read_text())
    return {
        "tokens_per_second": stats["tokens_per_second"],
        "seconds": time.perf_counter() - started,
        "new_tokens": stats["new_tokens"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--answers", type=int, default=48)
    parser.add_argument("--out")
    a = parser.parse_args()
    from evaluation.open_llm import base_run_dir

    records = instructions(a.answers)
    with tempfile.TemporaryDirectory() as outputs:
        run_dir = base_run_dir("smollm2", outputs)
        counter = iter(range(10**6))
        runs = alternate(
            {c: c for c in CASES}, a.rounds, lambda c: measure(c, records, run_dir, next(counter))
        )
    rows = [
        {"case": c, "rounds": len(r), **medians(r, ("tokens_per_second", "seconds", "new_tokens"))}
        for c, r in runs.items()
    ]
    base = next(r for r in rows if r["case"] == "given_order_b8")
    for r in rows:
        r["speed_vs_given_order_b8"] = r["tokens_per_second"] / base["tokens_per_second"]
    result = {
        "machine": machine(),
        "model": "SmolLM2-135M-Instruct (float32, greedy, 64 new tokens)",
        "answers": a.answers,
        "rows": rows,
    }
    write("generation.json", result, a.out)
    for r in rows:
        print(f"{r['case']:<16} {r['tokens_per_second']:8.1f} tokens/s  x{r['speed_vs_given_order_b8']:.2f}")


if __name__ == "__main__":
    main()
