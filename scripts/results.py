"""Collect every run's eval outputs into results/table.md and results/table.csv (evaluation/results.py)."""

import argparse
from pathlib import Path

from evaluation.agreement import judge_agreement
from evaluation.results import VARIANTS, collect, write_table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--outputs", default="outputs", help="folder of run directories")
    p.add_argument("--out", default="results", help="where table.md and table.csv go")
    p.add_argument(
        "--variant",
        default="leaderboard",
        choices=sorted(VARIANTS),
        help="what the ARC, HellaSwag, GSM8K columns show",
    )
    a = p.parse_args()
    rows = collect(Path(a.outputs), a.variant)
    md, csv_path = write_table(rows, Path(a.out), a.variant, judge_agreement(Path(a.outputs)))
    print(md.read_text())
    print(f"wrote {md} and {csv_path} ({len(rows)} rows)")


if __name__ == "__main__":
    main()
