"""One LoRA step of a Mistral-7B-shaped model on a GPU: chunked log-probs, full-vocabulary logits
and TRL 1.16, and the largest OT batch that fits.

    python benchmarks/gpu_memory.py --out FILE.json            # on a CUDA machine (gpu_check.sh)
    python benchmarks/gpu_memory.py --shape tiny --out FILE    # the same code on a small shape (CPU test)

The model is built on the device from Mistral-7B's configuration with random weights in bf16 (no
download; memory and time do not depend on the values), then wrapped with the recipe's LoRA (r 16
on every linear layer), gradient checkpointing, bf16 autocast. A step is one optimizer step of AOT
unpaired on ``--pairs`` pairs of random token ids at ``--length`` tokens (prompt a quarter, chosen
filling the rest, rejected an eighth shorter), the reference pass included:

- ``chunked``: our trainer, the output head at completion positions only (``train.logps_chunk``);
- ``full_logits``: our trainer with ``train.logps_chunk=0`` (the (S, L, V) logits path);
- ``trl``: TRL 1.16 ``DPOTrainer(loss_type="aot_unpaired")`` on the same token rows.

Recorded: seconds of the step after a warm-up step, peak allocated CUDA memory within it; then,
for ``chunked`` and ``full_logits``, the largest number of pairs per GPU whose step fits, found by
doubling then bisecting (each try one step; an out-of-memory error is caught and the try counted
as not fitting). The result file is rewritten after every measurement.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

sys.path.insert(0, str(Path(__file__).parent))
from bench_memory import token_rows  # noqa: E402
from common import machine, trl_aot_trainer  # noqa: E402

#: Mistral-7B-v0.1's shape (7.24B parameters), and a small one for testing this script on a CPU
SHAPES = {
    "mistral7b": dict(
        vocab_size=32_000,
        hidden_size=4096,
        intermediate_size=14_336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=4096,
    ),
    "tiny": dict(
        vocab_size=1024,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
    ),
}


class RandomModels:
    """The random-weight base model, built once; each case wraps and unwraps its LoRA on it."""

    def __init__(self, shape: str, device: str):
        from transformers import AutoTokenizer, MistralConfig, MistralForCausalLM

        from aot.fixtures import build_tiny

        config = MistralConfig(**SHAPES[shape], tie_word_embeddings=False, pad_token_id=0)
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        with torch.device(device):
            torch.manual_seed(0)
            self.base = MistralForCausalLM(config).to(dtype)
        self.base.config.use_cache = False
        # Any tokenizer with a pad token: rows are token ids already, the trainer only pads them.
        self.tokenizer = AutoTokenizer.from_pretrained(build_tiny())
        self.vocab = config.vocab_size
        self.device = device

    def cfg(self, case: str, pairs: int, length: int, out: str):
        from aot.config import compose

        return compose(
            "model=mistral",
            "loss=aot_unpaired",
            f"output_dir={out}",
            "train.max_steps=2",  # a warm-up step, then the measured one
            f"train.per_device_train_batch_size={pairs}",
            f"train.max_length={length}",
            f"train.max_prompt_length={length // 4 + 1}",
            f"train.logps_chunk={0 if case == 'full_logits' else 1024}",
            "train.logging_steps=100000",
            "train.gradient_checkpointing=true",
            f"train.bf16={'true' if self.device == 'cuda' else 'false'}",
            "model.lora_dropout=0.0",
        )

    def step(self, case: str, pairs: int, length: int) -> dict:
        """One measured step (after a warm-up one); the LoRA is removed again afterwards."""
        from peft import get_peft_model

        from aot.build import make_trainer
        from aot.config import build_training_args
        from aot.models import lora_config

        out = tempfile.mkdtemp()
        cfg = self.cfg(case, pairs, length, out)
        rows = token_rows(length, self.vocab, pairs)
        trainer = None
        try:
            if case == "trl":
                bf16 = self.device == "cuda"
                trainer = trl_aot_trainer(
                    cfg, None, self.tokenizer, rows, out, steps=2, model=self.base, bf16=bf16
                )
            else:
                args = build_training_args(cfg, out)
                args.save_strategy = "no"
                policy = get_peft_model(self.base, lora_config(cfg))
                trainer = make_trainer(cfg, args, policy, None, self.tokenizer, None, rows)
            clock = StepClock(self.device)
            trainer.add_callback(clock)
            trainer.train()
            return {"seconds": clock.seconds[-1], "peak_bytes": clock.peaks[-1]}
        finally:
            if trainer is not None:
                model = trainer.model
                trainer = None
                if hasattr(model, "unload"):
                    model.unload()  # the base model without LoRA layers, for the next case
                del model
            gc.collect()
            if self.device == "cuda":
                torch.cuda.empty_cache()

    def fits(self, case: str, pairs: int, length: int) -> bool:
        try:
            self.step(case, pairs, length)
            return True
        except torch.OutOfMemoryError:
            return False


class StepClock(TrainerCallback):
    """Seconds and peak allocated CUDA memory of each step (the peak reset as the step begins)."""

    def __init__(self, device: str):
        self.device, self.seconds, self.peaks = device, [], []

    def on_step_begin(self, *args, **kwargs):
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self.t0 = time.perf_counter()

    def on_step_end(self, *args, **kwargs):
        if self.device == "cuda":
            torch.cuda.synchronize()
        self.seconds.append(time.perf_counter() - self.t0)
        self.peaks.append(torch.cuda.max_memory_allocated() if self.device == "cuda" else 0)


def largest_fitting(models: RandomModels, case: str, length: int, start: int, limit: int) -> int:
    """The most pairs whose step fits: double from ``start`` until a try fails, then bisect."""
    good, bad = 0, None
    pairs = start
    while bad is None and pairs <= limit:
        if models.fits(case, pairs, length):
            good, pairs = pairs, pairs * 2
        else:
            bad = pairs
    if bad is None:
        return good
    while bad - good > 1:
        mid = (good + bad) // 2
        good, bad = (mid, bad) if models.fits(case, mid, length) else (good, mid)
    return good


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--shape", choices=list(SHAPES), default="mistral7b")
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--search-limit", type=int, default=256)
    parser.add_argument("--no-search", action="store_true")
    a = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    result = {
        "machine": machine(),
        "shape": a.shape,
        "length": a.length,
        "pairs": a.pairs,
        "steps": {},
        "largest_pairs": {},
    }

    def save():
        Path(a.out).write_text(json.dumps(result, indent=2) + "\n")

    models = RandomModels(a.shape, device)
    result["parameters"] = sum(p.numel() for p in models.base.parameters())
    save()
    for case in ("chunked", "full_logits", "trl"):
        try:
            result["steps"][case] = models.step(case, a.pairs, a.length)
        except Exception as e:  # recorded, and the next case goes on
            result["steps"][case] = {"error": f"{type(e).__name__}: {e}"[:500]}
        print(case, result["steps"][case], flush=True)
        save()
    if not a.no_search:
        for case in ("chunked", "full_logits"):
            result["largest_pairs"][case] = largest_fitting(models, case, a.length, a.pairs, a.search_limit)
            print(case, "largest pairs", result["largest_pairs"][case], flush=True)
            save()


if __name__ == "__main__":
    main()
