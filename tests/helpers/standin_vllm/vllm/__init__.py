"""A STAND-IN for vLLM's Python API (vLLM needs a GPU): ``LLM``, ``SamplingParams`` and
``vllm.lora.request.LoRARequest`` as ``evaluation.vllm_worker`` calls them. It records every call
to ``$STANDIN_VLLM_LOG`` (JSON lines) and answers each prompt with "stand-in answer <n>", so a
CPU test checks everything up to the engine: the job, the worker, the outputs in order. The real
engine runs in benchmarks/gpu_check.sh where vLLM is installed."""

import json
import os


def _log(event, **data):
    with open(os.environ["STANDIN_VLLM_LOG"], "a") as f:
        f.write(json.dumps({"event": event, **data}) + "\n")


class SamplingParams:
    def __init__(self, **kwargs):
        self.kwargs = kwargs


class _Completion:
    def __init__(self, text):
        self.text = text


class _Output:
    def __init__(self, text):
        self.outputs = [_Completion(text)]


class LLM:
    def __init__(self, model, tokenizer=None, tensor_parallel_size=1, dtype="auto", **kwargs):
        _log(
            "init",
            model=model,
            tokenizer=tokenizer,
            tensor_parallel_size=tensor_parallel_size,
            dtype=dtype,
            **kwargs,
        )

    def generate(self, prompts, params, lora_request=None):
        _log("generate", prompts=prompts, sampling=params.kwargs, lora=getattr(lora_request, "path", None))
        return [_Output(f"stand-in answer {i}") for i in range(len(prompts))]
