"""The controlled-sentiment experiment on SmolLM2 with VADER as the true reward (evaluation/experiment/).

python scripts/experiment.py            # the full run (about an hour on 2 CPU cores)
python scripts/experiment.py --quick    # every stage at toy size (a few minutes): the test suite's
"""

import argparse
import logging
from pathlib import Path

from evaluation.experiment import Settings, run_experiment, table

if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=None, help="default results/experiment (results/experiment-quick)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings.quick() if args.quick else Settings()
    out = Path(args.out or ("results/experiment-quick" if args.quick else "results/experiment"))
    summary = run_experiment(out, settings)
    print(table(summary))
    print(
        f"\nwritten to {out}/ (summary.json, table.md, true_reward_quantiles.png, reward_vs_kl.png) "
        f"in {summary['invocation_seconds']:.0f} s (stages cached by an earlier start not counted)"
    )
