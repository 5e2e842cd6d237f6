"""Packed attention on CUDA (torch's varlen flash attention) against padded SDPA.

    python benchmarks/gpu_packing.py --out FILE.json     # on a CUDA machine (gpu_check.sh, step 1)
    python benchmarks/gpu_packing.py --out FILE.json     # on a CPU: the same checks on the exact path

A random grouped-query Mistral (16 query heads sharing 4 key/value heads, head dim 64, 4 layers)
scores ``--pairs`` pairs (8) at UltraFeedback's lengths (``common.ultrafeedback_rows``), padded and packed:

- ``bf16``: bf16 weights, packed through ``varlen_attn`` (on CUDA) against padded SDPA: per-sequence
  log-prob sums and every weight's gradient, relative differences (bf16 kernels round
  differently; a leak across sequences or wrong positions moves sums by whole percents);
- ``float32``: the exact per-sequence path against padded SDPA, to float32 rounding;
- ``isolation``: the gradient of one sequence's logits with respect to every token embedding is
  exactly zero outside that sequence;
- ``kernel``: which packed kernel ran (``varlen_attn`` on CUDA in half precision).

Writes every figure and an ``ok`` per check; exits non-zero when a check fails.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, ultrafeedback_rows  # noqa: E402

#: bounds: bf16 kernels against each other (a bf16 step is 2^-8 = 0.4% of a value); float32 rounding
BF16_LOGPS, BF16_GRADS, FLOAT32_LOGPS = 5e-3, 5e-2, 1e-4


def random_model(device: str, dtype):
    from transformers import MistralConfig, MistralForCausalLM

    config = MistralConfig(
        vocab_size=32_000, hidden_size=1024, intermediate_size=2048, num_hidden_layers=4,
        num_attention_heads=16, num_key_value_heads=4, sliding_window=4096, attn_implementation="sdpa",
    )  # fmt: skip
    torch.manual_seed(0)
    with torch.device(device):
        model = MistralForCausalLM(config).to(dtype)
    with torch.no_grad():  # peaked logits, as a trained model's
        model.get_output_embeddings().weight.normal_(0, 0.05)
    return model


def scored(model, batch) -> tuple[torch.Tensor, dict]:
    """Per-sequence log-prob sums and every weight's gradient of a weighted sum of them."""
    from aot.logps import sequence_logps

    model.zero_grad()
    logps, _ = sequence_logps(model, batch)
    (logps * torch.linspace(-1, 2, len(logps), device=logps.device)).sum().backward()
    return logps.detach().double(), {n: p.grad.detach().double() for n, p in model.named_parameters()}


def compare(device: str, dtype, features) -> dict:
    from aot.batches import PreferenceCollator
    from aot.packing import KERNEL_CALLS, use_packed_attention

    def on(batch):
        return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}

    model = random_model(device, dtype)
    padded = scored(model, on(PreferenceCollator(0)(features)))
    use_packed_attention(model)
    before = dict(KERNEL_CALLS)
    packed = scored(model, on(PreferenceCollator(0, packed=True)(features)))
    rel = ((packed[0] - padded[0]).abs() / padded[0].abs()).max().item()
    grads = max(((packed[1][n] - g).norm() / g.norm().clamp_min(1e-30)).item() for n, g in padded[1].items())
    calls = {k: v - before.get(k, 0) for k, v in KERNEL_CALLS.items() if v - before.get(k, 0)}
    return {"logps_max_relative_diff": rel, "grads_max_relative_norm_diff": grads, "kernel_calls": calls}


def isolation(device: str, dtype, features) -> dict:
    from aot.batches import PreferenceCollator
    from aot.logps import model_inputs
    from aot.packing import use_packed_attention

    model = random_model(device, dtype)
    use_packed_attention(model)
    batch = {
        k: v.to(device) if torch.is_tensor(v) else v
        for k, v in PreferenceCollator(0, packed=True)(features).items()
    }
    bounds = batch["cu_seq_lens"].tolist()
    s, e = bounds[len(bounds) // 2 - 1 : len(bounds) // 2 + 1]  # a sequence in the middle of the row
    kept = {}
    hook = model.get_input_embeddings().register_forward_hook(
        lambda m, i, out: kept.update(out=out) or out.retain_grad()
    )
    model(**model_inputs(batch)).logits[0, s:e].float().sum().backward()
    hook.remove()
    grads = kept["out"].grad[0].abs().sum(-1)
    outside = torch.count_nonzero(grads[:s]).item() + torch.count_nonzero(grads[e:]).item()
    return {"nonzero_outside": outside, "own_sequence_grad": grads[s:e].sum().item()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--pairs", type=int, default=8)
    a = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    features = ultrafeedback_rows(a.pairs, 32_000)
    result = {"machine": machine(), "pairs": len(features), "checks": {}}
    half = compare(device, torch.bfloat16, features)
    half["ok"] = (
        half["logps_max_relative_diff"] < BF16_LOGPS and half["grads_max_relative_norm_diff"] < BF16_GRADS
    )
    result["checks"]["bf16"] = half
    full = compare(device, torch.float32, features)
    full["ok"] = full["logps_max_relative_diff"] < FLOAT32_LOGPS
    result["checks"]["float32"] = full
    iso = isolation(device, torch.bfloat16, features)
    iso["ok"] = iso["nonzero_outside"] == 0 and iso["own_sequence_grad"] > 0
    result["checks"]["isolation"] = iso
    want = "varlen_attn" if device == "cuda" else "sdpa per sequence"
    result["checks"]["kernel"] = {"bf16_ran": list(half["kernel_calls"]), "ok": want in half["kernel_calls"]}
    result["ok"] = all(c["ok"] for c in result["checks"].values())
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["checks"], indent=1))
    sys.exit(0 if result["ok"] else 1)


if __name__ == "__main__":
    main()
