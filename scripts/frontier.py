"""The reward-against-KL frontier of AOT and DPO on SmolLM2 x VADER (evaluation/experiment/sweep.py).

python scripts/frontier.py            # the full sweep (hours on 2 CPU cores; picks up where it stopped)
python scripts/frontier.py --quick    # every stage at toy size (the test suite's)

The full sweep's record (completions, reference, one file per finished run) is kept in
docs/experiment/frontier_sweep/ so that it resumes from what is committed; --points moves it.
"""

import argparse
import logging
from pathlib import Path

from evaluation.experiment.settings import FrontierSettings
from evaluation.experiment.sweep import run_sweep

if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=None, help="default results/frontier (results/frontier-quick)")
    parser.add_argument(
        "--points",
        default=None,
        help="the sweep's record; default docs/experiment/frontier_sweep (OUT/points)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = FrontierSettings.quick() if args.quick else FrontierSettings()
    out = Path(args.out or ("results/frontier-quick" if args.quick else "results/frontier"))
    points = Path(args.points or (out / "points" if args.quick else "docs/experiment/frontier_sweep"))
    frontier = run_sweep(out, points, settings)
    for d in frontier["differences"]:
        print(
            f"{d['method']} (OT {d['ot_batch']}) - dpo at KL {d['kl']:g}: {d['diff']:+.3f} "
            f"[{d['ci_low'] if d['ci_low'] is None else round(d['ci_low'], 3)}, "
            f"{d['ci_high'] if d['ci_high'] is None else round(d['ci_high'], 3)}]"
        )
    print(f"\nwritten to {out}/ (frontier.json, frontier.png); the record in {points}/")
