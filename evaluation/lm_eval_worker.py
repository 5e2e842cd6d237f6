"""Runs one lm-eval job in the Python that has vLLM and lm-eval (``evaluation.open_llm`` with
``BACKEND=vllm``: lm-eval's vLLM backend imports vLLM, which lives in a venv of its own).

    <python with vllm and lm_eval> -m evaluation.lm_eval_worker JOB.json OUT.json

The job is ``lm_eval.simple_evaluate``'s keyword arguments, with ``include_path`` (the task
folders) in place of a task manager; the output is its results, configs, shot counts and versions
as JSON. It imports nothing of this repo's dependencies but lm-eval.
"""

import json
import sys

import lm_eval
from lm_eval.tasks import TaskManager


def main(job_path: str, out_path: str) -> None:
    job = json.load(open(job_path))
    manager = TaskManager(include_path=job.pop("include_path"))
    out = lm_eval.simple_evaluate(**job, task_manager=manager)
    keep = ("results", "configs", "n-shot", "versions", "config")
    with open(out_path, "w") as f:
        json.dump({k: out.get(k, {}) for k in keep}, f, indent=1, default=str)


if __name__ == "__main__":  # vLLM starts its engine in a spawned process: the guard is required
    main(*sys.argv[1:3])
