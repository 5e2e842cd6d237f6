"""Open LLM tasks with lm-eval for a run or a base model (logic in evaluation/open_llm.py).

python scripts/eval_open_llm.py --run outputs/tiny-aot_unpaired-sample
python scripts/eval_open_llm.py --model merlinite --leaderboard
python scripts/eval_open_llm.py --run outputs/... --chat      # prompts in the model's chat template
"""

import argparse
import logging
import sys

from evaluation.open_llm import evaluate
from evaluation.vllm_env import VllmMissing


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--run", help="a run directory written by make train")
    which.add_argument("--model", help="a model recipe name (recipes/model/) or a hub id / local path")
    p.add_argument("--tasks", help="comma-separated lm-eval tasks (default: the six Open LLM tasks)")
    p.add_argument("--include-path", help="a folder of custom lm-eval task YAMLs")
    p.add_argument(
        "--leaderboard", action="store_true", help="Open LLM Leaderboard v1 shot counts instead of 0-shot"
    )
    p.add_argument("--tiny", action="store_true", help="tinyBenchmarks versions of the tasks")
    p.add_argument(
        "--backend", default="hf", choices=["hf", "vllm"], help="vllm: in vLLM's Python (make vllm)"
    )
    p.add_argument("--batch-size", default="auto")
    p.add_argument("--device")
    p.add_argument("--limit", type=float, help="examples per task (for smoke tests)")
    p.add_argument(
        "--chat",
        action="store_true",
        help="apply the run's chat template (results in eval/open_llm/<setting>+chat/)",
    )
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        evaluate(
            a.run,
            a.model,
            a.tasks,
            a.include_path,
            a.leaderboard,
            a.tiny,
            a.backend,
            a.batch_size,
            a.device,
            a.limit,
            chat=a.chat,
        )
    except (VllmMissing, FileNotFoundError) as e:  # the user's to fix: no traceback
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
