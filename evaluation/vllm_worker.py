"""Runs one generation job with vLLM, in the Python that has vLLM (``evaluation.generation``).

    <python with vllm> -m evaluation.vllm_worker JOB.json OUT.jsonl

The job holds the model, the LoRA adapter (if any), the rendered prompts, their indices in the
instruction set, the sampling parameters and the tensor-parallel size; the output is one line
``{"index", "text"}`` per prompt. It imports nothing of this repo's dependencies but vLLM.
"""

import json
import sys

from vllm import LLM, SamplingParams
from vllm.lora.request import LoRARequest


def main(job_path: str, out_path: str) -> None:
    job = json.load(open(job_path))
    lora = {"enable_lora": True, "max_lora_rank": max(8, int(job["lora_rank"]))} if job["lora"] else {}
    llm = LLM(
        model=job["model"],
        tokenizer=job["tokenizer"],
        tensor_parallel_size=job["tensor_parallel_size"],
        dtype=job["dtype"],
        **lora,
    )
    request = LoRARequest("run", 1, job["lora"]) if job["lora"] else None
    outputs = llm.generate(job["prompts"], SamplingParams(**job["sampling"]), lora_request=request)
    with open(out_path, "w") as f:
        for index, output in zip(job["indices"], outputs):
            f.write(json.dumps({"index": index, "text": output.outputs[0].text}) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:3])
