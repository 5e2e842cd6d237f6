"""Runs one generation job with vLLM, in the Python that has vLLM (``evaluation.generation``).

    <python with vllm> -m evaluation.vllm_worker JOB.json OUT.jsonl

The job holds the engine's arguments (model, tokenizer, dtype, tensor parallelism, LoRA with
its ``max_lora_rank``), the LoRA adapter (if any), the prompts as token ids (never text: vLLM
would tokenize text again with special tokens, a second BOS), their indices in the instruction
set and the sampling parameters. Each output line is ``{"index", "text", "prompt_token_ids",
"token_ids"}``: the answer, the ids the engine received and the ids it generated. It imports
nothing of this repo's dependencies but vLLM.
"""

import json
import sys

from vllm import LLM, SamplingParams
from vllm.inputs import TokensPrompt
from vllm.lora.request import LoRARequest


def main(job_path: str, out_path: str) -> None:
    job = json.load(open(job_path))
    llm = LLM(**job["engine"])
    request = LoRARequest("run", 1, job["lora"]) if job["lora"] else None
    prompts = [TokensPrompt(prompt_token_ids=ids) for ids in job["prompt_token_ids"]]
    outputs = llm.generate(prompts, SamplingParams(**job["sampling"]), lora_request=request)
    with open(out_path, "w") as f:
        for index, output in zip(job["indices"], outputs):
            row = {
                "index": index,
                "text": output.outputs[0].text,
                "prompt_token_ids": list(output.prompt_token_ids),
                "token_ids": list(output.outputs[0].token_ids),
            }
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":  # vLLM starts its engine in a spawned process: the guard is required
    main(*sys.argv[1:3])
