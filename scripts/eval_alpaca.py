"""AlpacaEval for a run: generation with its chat template, then a judge (evaluation/alpaca.py).

python scripts/eval_alpaca.py --run outputs/tiny-aot_unpaired-sample --judge llama3-70b
python scripts/eval_alpaca.py --model merlinite --judge gpt4      # the base model's row
python scripts/eval_alpaca.py --run outputs/... --gen vllm --decoding leaderboard --tp 2
"""

import argparse
import logging
import os
import sys

from evaluation.alpaca import evaluate
from evaluation.generation import DECODING, ENGINES
from evaluation.judging import JudgeUnreachable
from evaluation.vllm_env import VllmMissing


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--run", help="a run directory written by make train")
    which.add_argument("--model", help="a base model: recipe name, hub id or local directory")
    p.add_argument("--judge", default="gpt4", help="a folder of evaluation/judges/ (gpt4, llama3-70b)")
    p.add_argument(
        "--alpaca-set",
        default=os.environ.get("ALPACA_SET") or None,
        help="local JSON of {instruction, output, generator, dataset} records (default: the hub file)",
    )
    p.add_argument(
        "--judge-url", default=os.environ.get("JUDGE_URL") or None, help="OpenAI-compatible endpoint"
    )
    p.add_argument("--max-new-tokens", type=int, help="generation length (default 2048)")
    p.add_argument("--decoding", default="greedy", choices=sorted(DECODING), help="decoding preset")
    p.add_argument("--gen", default="hf", choices=ENGINES, help="generation engine (vllm: a venv of its own)")
    p.add_argument("--tp", type=int, default=1, help="vLLM tensor-parallel size")
    p.add_argument("--no-swap", action="store_true", help="skip the position-swap consistency sample")
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        evaluate(
            a.run,
            a.judge,
            a.alpaca_set,
            a.judge_url,
            a.max_new_tokens,
            model=a.model,
            decoding=a.decoding,
            engine=a.gen,
            tensor_parallel_size=a.tp,
            swap=not a.no_swap,
        )
    except (JudgeUnreachable, VllmMissing, FileNotFoundError) as e:  # the user's to fix: no traceback
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
