"""Padded against packed (padding-free) batches against TRL 1.16, at UltraFeedback's lengths.

    python benchmarks/bench_packing.py                                    # this CPU: SmolLM2 (make bench-packing)
    python benchmarks/bench_packing.py --shape mistral7b --out F.json     # a GPU: random 7B weights (gpu_check.sh)
    python benchmarks/bench_packing.py --shape tiny --pairs 2 --out F     # the same code on a small shape (CPU test)

Every case trains one AOT-unpaired LoRA step after warm-up steps, on the same ``--pairs`` token
rows every step (synthetic ids, lengths from ``common.ultrafeedback_rows``), with the recipe's
LoRA, gradient checkpointing and, on a GPU, bf16 autocast:

- ``padded``: our trainer, ``train.padding_free=false`` (the micro-batch padded to its longest);
- ``packed``: our trainer, ``train.padding_free=true`` (one row, ``aot/packing.py``);
- ``trl``: TRL 1.16 ``DPOTrainer(loss_type="aot_unpaired")`` on the same token rows.

Recorded per case: seconds per step (median of the measured steps), pairs and real tokens per
second, tokens the model computed per pair (the policy forward's input size over the pairs), peak
memory within a step, and on a GPU the model FLOP utilisation (``mfu``) counted on real tokens
only. With ``--largest`` (GPU): the most pairs one micro-batch of ``packed`` and of ``trl`` can
hold, predicted from the measured step's memory (linear in tokens) and checked once by one step
at the predicted size (then at 90% if that ran out of memory). The result file is rewritten after
every measurement.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

sys.path.insert(0, str(Path(__file__).parent))
from common import UF_MAX_LENGTH, machine, peak_bytes, reset_peak, trl_aot_trainer, ultrafeedback_rows  # noqa: E402

#: random-weight shapes built on the device (no download), and a small one for CPU tests
SHAPES = {
    "mistral7b": ("mistral", dict(vocab_size=32_000, hidden_size=4096, intermediate_size=14_336,
                                  num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8)),
    "llama3_8b": ("llama3", dict(vocab_size=128_256, hidden_size=4096, intermediate_size=14_336,
                                 num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                                 rope_theta=500_000.0)),
    "tiny": ("mistral", dict(vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2)),
}  # fmt: skip
#: dense bf16 peak of the GPUs this runs on (spec sheets), for MFU
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0}
CASES = ("padded", "packed", "trl")


class Models:
    """The base model, loaded or built once; every case wraps its own LoRA around it and removes it."""

    def __init__(self, shape: str, device: str):
        from transformers import AutoTokenizer

        from aot.fixtures import build_tiny, ensure_smollm2

        self.device, self.shape = device, shape
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        if shape == "smollm2":
            from transformers import AutoModelForCausalLM

            path = ensure_smollm2()
            self.recipe = "smollm2"
            self.base = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="sdpa")
            self.tokenizer = AutoTokenizer.from_pretrained(path)
        else:
            from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

            self.recipe, dims = SHAPES[shape]
            config_cls, model_cls = (
                (MistralConfig, MistralForCausalLM)
                if self.recipe == "mistral"
                else (LlamaConfig, LlamaForCausalLM)
            )
            config = config_cls(**dims, tie_word_embeddings=False, pad_token_id=0, attn_implementation="sdpa")
            with torch.device(device):
                torch.manual_seed(0)
                self.base = model_cls(config).to(dtype)
            # Any tokenizer with a pad token: rows are token ids already, the trainers only pad them.
            self.tokenizer = AutoTokenizer.from_pretrained(build_tiny())
        self.base.to(device)
        self.vocab = self.base.config.vocab_size

    def cfg(self, case: str, pairs: int, steps: int, out: str):
        from aot.config import compose

        return compose(
            f"model={self.recipe}",
            "loss=aot_unpaired",
            f"output_dir={out}",
            f"train.max_steps={steps}",
            f"train.per_device_train_batch_size={pairs}",
            f"train.max_length={UF_MAX_LENGTH}",
            "train.max_prompt_length=512",
            f"train.padding_free={'true' if case == 'packed' else 'false'}",
            "train.logging_steps=100000",
            "train.gradient_checkpointing=true",
            f"train.bf16={'true' if self.device == 'cuda' else 'false'}",
            "train.warmup_steps=0",
            "model.lora_dropout=0.0",
        )

    def trainer(self, case: str, rows: list[dict], steps: int):
        from peft import get_peft_model

        from aot.arguments import build_training_args
        from aot.build import make_trainer
        from aot.models import lora_config

        out = tempfile.mkdtemp()
        cfg = self.cfg(case, len(rows), steps, out)
        if case == "trl":
            return trl_aot_trainer(
                cfg, None, self.tokenizer, rows, out, steps=steps, model=self.base, bf16=self.device == "cuda"
            )
        args = build_training_args(cfg, out)
        args.save_strategy = "no"
        return make_trainer(
            cfg, args, get_peft_model(self.base, lora_config(cfg)), None, self.tokenizer, None, rows
        )

    def steps(self, case: str, rows: list[dict], warmup: int, measured: int) -> dict:
        """``warmup + measured`` steps on ``rows`` (the whole set every step); the measured ones'
        seconds and peaks, the policy forward's input size, the memory held before a step."""
        trainer = None
        clock = StepClock(self.device)
        hook = self.base.get_input_embeddings().register_forward_hook(clock.count_tokens)
        try:
            trainer = self.trainer(case, rows, warmup + measured)
            trainer.add_callback(clock)
            trainer.train()
            return {
                "seconds": statistics.median(clock.seconds[warmup:]),
                "peak_bytes": max(clock.peaks[warmup:]),
                "held_before_step_bytes": clock.held[-1],
                "tokens_per_forward": max(clock.tokens),
            }
        finally:
            hook.remove()
            if trainer is not None:
                model = trainer.model
                trainer = None
                if hasattr(model, "unload"):
                    model.unload()  # the base model without LoRA layers, for the next case
                del model
            if self.base.config._attn_implementation != "sdpa":
                self.base.set_attn_implementation("sdpa")
            gc.collect()
            if self.device == "cuda":
                torch.cuda.empty_cache()


class StepClock(TrainerCallback):
    """Seconds and peak memory of each step (the peak reset as the step begins), the memory held
    when it begins, and the size of every input the embedding sees."""

    def __init__(self, device: str):
        self.device, self.seconds, self.peaks, self.held, self.tokens = device, [], [], [], []

    def count_tokens(self, module, inputs, output):
        self.tokens.append(inputs[0].numel())

    def on_step_begin(self, *args, **kwargs):
        if self.device == "cuda":
            torch.cuda.synchronize()
            self.held.append(torch.cuda.memory_allocated())
        else:
            self.held.append(0)
        reset_peak()
        self.t0 = time.perf_counter()

    def on_step_end(self, *args, **kwargs):
        if self.device == "cuda":
            torch.cuda.synchronize()
        self.seconds.append(time.perf_counter() - self.t0)
        self.peaks.append(peak_bytes()[0])


def model_flops(config, rows: list[dict]) -> float:
    """Model FLOPs of one LoRA step with gradient checkpointing on ``rows``' real tokens: every
    non-embedding weight 8 FLOPs per token (policy forward, its recomputation, the backward to
    activations, the reference forward: 2 each; LoRA's own weights are negligible), the output head
    at completion tokens only, and causal attention 10 L^2 d per sequence and layer (2 L^2 d a
    forward, three forwards and a backward of twice that)."""
    h, layers, vocab = config.hidden_size, config.num_hidden_layers, config.vocab_size
    kv = config.num_key_value_heads * (h // config.num_attention_heads)
    per_layer = h * h * 2 + h * kv * 2 + 3 * h * config.intermediate_size
    flops = 0.0
    for r in rows:
        p = len(r["prompt_ids"])
        for answer in (r["chosen_ids"], r["rejected_ids"]):
            n = p + len(answer)
            flops += 8 * per_layer * layers * n + 8 * h * vocab * len(answer) + 10 * n * n * h * layers
    return flops


def summarise(step: dict, rows: list[dict], device: str, config) -> dict:
    real = sum(2 * len(r["prompt_ids"]) + len(r["chosen_ids"]) + len(r["rejected_ids"]) for r in rows)
    out = {
        **step,
        "pairs_per_second": len(rows) / step["seconds"],
        "real_tokens_per_second": real / step["seconds"],
        "tokens_computed_per_pair": step["tokens_per_forward"] / len(rows),
        "real_tokens_per_pair": real / len(rows),
    }
    if device == "cuda":
        name = torch.cuda.get_device_name()
        peak = next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
        if peak:
            out["mfu"] = model_flops(config, rows) / step["seconds"] / (peak * 1e12)
    return out


def predicted_largest(step: dict, tokens_per_pair: float) -> int:
    """Pairs per micro-batch that fit the card, if memory grows linearly with the tokens computed."""
    capacity = 0.97 * torch.cuda.get_device_properties(0).total_memory
    per_token = (step["peak_bytes"] - step["held_before_step_bytes"]) / step["tokens_per_forward"]
    return int((capacity - step["held_before_step_bytes"]) / per_token / tokens_per_pair)


def check_largest(models: Models, case: str, pairs: int) -> dict:
    """One step at ``pairs`` (then at 90% if it ran out of memory)."""
    tried = []
    for size in (pairs, int(pairs * 0.9)):
        rows = ultrafeedback_rows(size, models.vocab, seed=size)
        try:
            step = models.steps(case, rows, warmup=0, measured=1)
            tried.append({"pairs": size, "fits": True, "peak_bytes": step["peak_bytes"]})
            return {"largest_checked": size, "tries": tried}
        except torch.OutOfMemoryError:
            tried.append({"pairs": size, "fits": False})
            gc.collect()
            torch.cuda.empty_cache()
    return {"largest_checked": None, "tries": tried}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=["smollm2", *SHAPES], default="smollm2")
    parser.add_argument("--pairs", type=int, default=None, help="pairs per step (GPU 16, CPU 8)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=None, help="measured steps (GPU 3, CPU 2)")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument(
        "--largest", action="store_true", help="GPU: predict and check the largest micro-batch"
    )
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "packing.json"))
    parser.add_argument("--resume", action="store_true", help="keep the cases --out already holds")
    a = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    pairs = a.pairs or (16 if device == "cuda" else 8)
    measured = a.steps or (3 if device == "cuda" else 2)
    models = Models(a.shape, device)
    rows = ultrafeedback_rows(pairs, models.vocab)
    result = {
        "machine": machine(),
        "shape": a.shape,
        "parameters": sum(p.numel() for p in models.base.parameters()),
        "pairs_per_step": pairs,
        "warmup_steps": a.warmup,
        "measured_steps": measured,
        "length_model": "benchmarks/common.py ultrafeedback_rows",
        "cases": {},
    }
    if a.resume and Path(a.out).is_file():
        kept = json.loads(Path(a.out).read_text())
        result["cases"] = {k: v for k, v in kept["cases"].items() if "error" not in v}

    def save():
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(result, indent=2) + "\n")

    for case in a.cases.split(","):
        if case in result["cases"]:
            continue
        try:
            step = models.steps(case, rows, a.warmup, measured)
            result["cases"][case] = summarise(step, rows, device, models.base.config)
        except Exception as e:  # recorded; the next case goes on
            result["cases"][case] = {"error": f"{type(e).__name__}: {e}"[:600]}
        print(case, json.dumps(result["cases"][case]), flush=True)
        save()
    result["ratios"] = ratios(result["cases"])
    save()
    if a.largest and device == "cuda":
        result["largest"] = {}
        real_per_pair = result["cases"]["packed"]["real_tokens_per_pair"]
        for case, per_pair in (("packed", real_per_pair), ("trl", 2 * UF_MAX_LENGTH)):
            if "peak_bytes" not in result["cases"].get(case, {}):
                continue
            predicted = predicted_largest(result["cases"][case], per_pair)
            result["largest"][case] = {"predicted": predicted, **check_largest(models, case, predicted)}
            print(case, "largest", json.dumps(result["largest"][case]), flush=True)
            save()


def ratios(cases: dict) -> dict:
    """Packed against padded and against TRL, where both ran."""
    out = {}
    packed = cases.get("packed", {})
    for other in ("padded", "trl"):
        o = cases.get(other, {})
        if "seconds" in packed and "seconds" in o:
            out[f"packed_vs_{other}"] = {
                "step_time": packed["seconds"] / o["seconds"],
                "pairs_per_second": packed["pairs_per_second"] / o["pairs_per_second"],
                "tokens_computed_per_pair": packed["tokens_computed_per_pair"]
                / o["tokens_computed_per_pair"],
                "peak_memory": packed["peak_bytes"] / o["peak_bytes"] if o["peak_bytes"] else None,
            }
    return out


if __name__ == "__main__":
    main()
