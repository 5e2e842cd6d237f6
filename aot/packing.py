"""Padding-free attention for packed rows: a micro-batch's sequences concatenated into one row.

A padded micro-batch computes every layer on ``S x L_max`` tokens; at UltraFeedback's lengths
about half of them are padding. Packed, the same sequences are one row of ``T = sum(L_i)``
tokens whose position ids restart at every sequence, and attention is causal *within* each
sequence only, so every sequence's hidden states are those of the padded batch (up to float
rounding).

``PACKED`` is an attention implementation registered in transformers' attention interface (the
hook every current causal LM of the library calls per layer). A forward that passes
``cu_seq_lens_q`` (cumulative sequence lengths, ``(S + 1,)`` int32) and ``max_length_q`` as
keyword arguments to the model (``aot.logps.model_inputs``) runs packed:

- on CUDA in half precision: ``torch.nn.attention.varlen.varlen_attn``, torch's own
  variable-length flash attention, causal through ``window_size=(-1, 0)`` (a tuple);
- otherwise (the CPU, float32, attention dropout): scaled-dot-product attention per sequence,
  causal, exact.

A forward without those arguments (padded batches, generation) is plain SDPA with the usual
mask, so a model switched to ``PACKED`` serves both layouts. The mask function registered
beside it builds no mask when the forward passes none (a packed row: an O(T^2) block-diagonal
mask is what this path avoids) and SDPA's mask otherwise.

``why_not_packed`` names what keeps a model from packing (checked at start; the run then pads).
"""

from __future__ import annotations

import inspect
from collections import Counter

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

#: the attention implementation name a packing model is switched to
PACKED = "aot_packed"

#: packed attention calls per kernel in this process ("varlen_attn", "sdpa per sequence"): what ran
KERNEL_CALLS: Counter = Counter()

try:  # torch >= 2.10
    from torch.nn.attention.varlen import varlen_attn
except ImportError:  # pragma: no cover - older torch: the exact per-sequence path everywhere
    varlen_attn = None


def _varlen_options(query: torch.Tensor, key: torch.Tensor) -> dict | None:
    """Keyword arguments that make ``varlen_attn`` causal (and grouped-query where heads differ)
    in this torch, or ``None`` when it cannot be called causally. torch 2.11 takes grouped-query
    heads as they are; 2.13 asks for ``enable_gqa``."""
    if varlen_attn is None:
        return None
    params = inspect.signature(varlen_attn).parameters
    if "window_size" in params:
        options = {"window_size": (-1, 0)}  # a tuple: (left, right) = (everything, nothing ahead)
    elif "is_causal" in params:
        options = {"is_causal": True}
    else:
        return None
    if "enable_gqa" in params and query.shape[1] != key.shape[1]:
        options["enable_gqa"] = True
    return options if "scale" in params else None


def packed_attention(query, key, value, cu_seq_lens, max_length: int, scaling=None, dropout=0.0):
    """Causal attention within each sequence of one packed row.

    query (1, Hq, T, D), key/value (1, Hkv, T, D) as transformers passes them; ``cu_seq_lens``
    (S + 1,) int32 with ``cu_seq_lens[-1] == T``. Returns (1, T, Hq, D)."""
    q, k, v = query[0].transpose(0, 1), key[0].transpose(0, 1), value[0].transpose(0, 1)  # (T, H, D)
    options = _varlen_options(q, k) if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) else None
    if options is not None and dropout == 0.0:
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()  # rotary embeddings left (H, T, D) strides
        cu = cu_seq_lens.to(device=q.device, dtype=torch.int32)
        KERNEL_CALLS["varlen_attn"] += 1
        return varlen_attn(q, k, v, cu, cu, max_length, max_length, scale=scaling, **options).unsqueeze(0)
    KERNEL_CALLS["sdpa per sequence"] += 1
    bounds = cu_seq_lens.tolist()
    gqa = query.shape[1] != key.shape[1]
    parts = [
        F.scaled_dot_product_attention(
            query[:, :, s:e], key[:, :, s:e], value[:, :, s:e],
            is_causal=True, scale=scaling, dropout_p=dropout, enable_gqa=gqa,
        )
        for s, e in zip(bounds[:-1], bounds[1:])
    ]  # fmt: skip
    return torch.cat(parts, dim=2).transpose(1, 2)


def _attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """The registered implementation: packed when the forward carries sequence boundaries."""
    cu_seq_lens = kwargs.pop("cu_seq_lens_q", None)
    if cu_seq_lens is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    for name in ("softcap", "s_aux"):  # attention variants the packed kernels do not compute
        if kwargs.get(name) is not None:
            raise NotImplementedError(f"packed attention cannot apply {name}; set train.padding_free=false")
    if query.shape[0] != 1 or attention_mask is not None:
        raise ValueError("a packed forward is one row (batch size 1) with no attention mask")
    out = packed_attention(query, key, value, cu_seq_lens, kwargs["max_length_q"], scaling, dropout)
    return out.contiguous(), None


def _mask(*args, attention_mask=None, **kwargs):
    """No mask for a packed row (the forward passes none); SDPA's mask for anything else."""
    return None if attention_mask is None else sdpa_mask(*args, attention_mask=attention_mask, **kwargs)


AttentionInterface.register(PACKED, _attention)
AttentionMaskInterface.register(PACKED, _mask)


def why_not_packed(model, max_length: int) -> str | None:
    """Why ``model`` cannot run packed rows of sequences up to ``max_length`` tokens, or ``None``."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = base.config
    if not getattr(type(base), "_supports_attention_backend", False):
        return f"{type(base).__name__} does not route attention through transformers' attention interface"
    window = getattr(config, "sliding_window", None)
    if window is not None and getattr(config, "use_sliding_window", True) and window < max_length:
        return f"its sliding window ({window} tokens) is shorter than train.max_length={max_length}"
    for name in ("attn_logit_softcapping", "attention_chunk_size"):
        if getattr(config, name, None):
            return f"its attention uses {name}={getattr(config, name)}"
    return None


def use_packed_attention(model) -> None:
    """Switch ``model`` (a PEFT wrapper's base model included) to the packed implementation."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base.set_attn_implementation(PACKED)
