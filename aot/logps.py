"""Completion log-probs of a causal LM without full-vocabulary logits.

The usual way to score ``prompt + completion`` keeps float32 logits over the whole vocabulary at
every position, prompt included, for the backward pass: (S, L, V) floats, plus a transient of
the same size for ``logsumexp``. At a real vocabulary that tensor, not the model, caps the
number of sequences per device, and so the OT batch.

Here the model runs as usual up to its final hidden states; its output head is then applied
only at completion positions, ``chunk`` tokens at a time, and only each token's log-prob
(``logit[target] - logsumexp(logits)``) is kept. The backward pass recomputes each chunk's
logits (one extra head matmul) instead of storing them. What stays alive for the backward is the
completion positions' hidden states, (N, H), instead of (S, L, V) logits.

The head is swapped for the duration of one forward call by setting ``forward`` on the head
module instance, so the head is still *called* inside the model's forward: whatever wraps
modules (FSDP's unshard of the root's parameters, ZeRO-3's per-module gather, autocast) sees
the same calls as before, and the gradient with respect to the head's weight (full fine-tuning,
tied embeddings) reaches the same parameter. Models whose head is not a plain ``nn.Linear``
(a LoRA-adapted head) or whose logits are transformed after the head (soft-capping, a logit
scale) take the full-logits path.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

#: tokens per head chunk. At V = 128k a chunk of 1,024 tokens is 0.5 GB of float32 logits, held
#: twice (logits and their softmax) at a time in the backward; smaller chunks cost more calls.
DEFAULT_CHUNK = 1024

#: config attributes that transform logits after the head (the chunked path would skip them)
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "output_multiplier_scale")


def _picked_logps(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[target] in float32: logits (..., V), targets (...) -> (...)."""
    logits = logits.float()
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)


def model_inputs(batch: dict) -> dict:
    """The model's keyword arguments for a batch: a packed row's position ids and sequence
    boundaries (read by ``aot.packing``'s attention), or a padded batch's attention mask. No
    forward here reads a key/value cache, so none is built (and transformers lets a packed row
    with a cache attend across sequences)."""
    if "cu_seq_lens" not in batch:
        return {
            "input_ids": batch["input_ids"],
            "attention_mask": batch["attention_mask"],
            "use_cache": False,
        }
    cu, longest = batch["cu_seq_lens"], batch["longest"]
    return {
        "input_ids": batch["input_ids"],
        "position_ids": batch["position_ids"],
        "use_cache": False,
        "cu_seq_lens_q": cu,
        "cu_seq_lens_k": cu,
        "max_length_q": longest,
        "max_length_k": longest,
    }


def completion_positions(batch: dict) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Where the completion tokens are: the mask over positions 1.. (the token at t is scored from
    position t - 1), the sequence each one belongs to (N,), and the number of sequences S.
    Padded: a row is a sequence; packed: ``cu_seq_lens`` holds the boundaries in the one row."""
    mask = batch["completion_mask"][:, 1:].bool()  # (rows, L-1)
    if "cu_seq_lens" not in batch:
        return mask, mask.nonzero()[:, 0], mask.shape[0]
    cu = batch["cu_seq_lens"].to(mask.device)
    positions = mask[0].nonzero()[:, 0] + 1  # (N,) token positions in the packed row
    return mask, torch.searchsorted(cu[1:].long(), positions, right=True), cu.numel() - 1


def _per_sequence(token_logps: torch.Tensor, rows: torch.Tensor, count: int) -> torch.Tensor:
    """Completion-token log-probs (N,) summed by sequence: (S,)."""
    return token_logps.new_zeros(count).index_add(0, rows, token_logps)


def full_logits_sequence_logps(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference computation: full-vocabulary logits, then log-softmax at the targets."""
    mask, rows, count = completion_positions(batch)
    input_ids = batch["input_ids"]
    logits = model(**model_inputs(batch)).logits[:, :-1]
    token_logps = _picked_logps(logits[mask], input_ids[:, 1:][mask])  # (N,)
    return _per_sequence(token_logps, rows, count), torch.bincount(rows, minlength=count).float()


def _inner(model):
    """The model under data-parallel / engine wrappers (DDP, FSDP1, DeepSpeed) that expose ``.module``.
    (accelerate's ``extract_model_from_parallel`` would import DeepSpeed into every run.)"""
    while isinstance(getattr(model, "module", None), torch.nn.Module):
        model = model.module
    return model


def output_head(model):
    """The output head as a plain ``nn.Linear``, or ``None`` when only full logits are exact."""
    inner = _inner(model)
    config = getattr(inner, "config", None)
    if any(getattr(config, name, None) not in (None, 1, 1.0) for name in _LOGIT_TRANSFORMS):
        return None
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    # A Linear whose forward is Linear's own: FSDP's wrapped class qualifies (it works by hooks);
    # a LoRA-adapted or quantised head (its own forward) does not.
    plain = isinstance(head, torch.nn.Linear) and type(head).forward is torch.nn.Linear.forward
    return head if plain else None


class _TokenLogps(torch.autograd.Function):
    """log softmax(h W^T + b)[target] for N positions, chunked, logits recomputed in backward.

    ``weight``/``bias`` are kept as attributes rather than saved tensors: ZeRO-3 empties a
    parameter's data after the head's forward and gathers it again before the head's backward
    (as FSDP does with storage), and the backward reads whatever the parameter holds then.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk):
        device_type = hidden.device.type
        ctx.autocast = (torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type))
        out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk):
            logits = F.linear(hidden[start : start + chunk], weight, bias)  # (c, V)
            out[start : start + chunk] = _picked_logps(logits, targets[start : start + chunk])
        ctx.save_for_backward(hidden, targets)
        ctx.weight, ctx.bias, ctx.chunk = weight, bias, chunk
        return out

    @staticmethod
    def backward(ctx, grad):
        hidden, targets = ctx.saved_tensors
        weight, bias, chunk = ctx.weight, ctx.bias, ctx.chunk
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        grad_b = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_b else None
        enabled, dtype = ctx.autocast
        for start in range(0, hidden.shape[0], chunk):
            h = hidden[start : start + chunk].detach().requires_grad_(need_h)
            w = weight.detach().requires_grad_(need_w)
            b = bias.detach().requires_grad_(need_b) if bias is not None else None
            with torch.enable_grad(), torch.autocast(hidden.device.type, dtype=dtype, enabled=enabled):
                lp = _picked_logps(F.linear(h, w, b), targets[start : start + chunk])
            wanted = [t for t, need in ((h, need_h), (w, need_w), (b, need_b)) if need]
            grads = iter(torch.autograd.grad(lp, wanted, grad[start : start + chunk]))
            if need_h:
                grad_h[start : start + chunk] = next(grads)
            if need_w:
                grad_w += next(grads)
            if need_b:
                grad_b += next(grads)
        grad_w = grad_w.to(weight.dtype) if need_w else None
        grad_b = grad_b.to(bias.dtype) if need_b else None
        return grad_h, grad_w, grad_b, None, None


def sequence_logps(model, batch: dict, chunk: int = DEFAULT_CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probs of the completion tokens (S,) and their counts (S,).

    ``batch`` is padded (``input_ids``, ``attention_mask``, ``completion_mask``, each (S, L)) or
    packed (one row, ``aot.batches.pack``); the token at position t is scored from the hidden state
    at t - 1 of its own sequence. ``chunk`` tokens go through the head at a time; ``chunk=0``
    computes full-vocabulary logits (the reference path).
    """
    head = output_head(model) if chunk else None
    if head is None:
        if chunk:  # Python's default filter shows this once per run
            warnings.warn(
                "output head is not a plain Linear (or logits are transformed): full-vocabulary logits"
            )
        return full_logits_sequence_logps(model, batch)
    input_ids = batch["input_ids"]
    mask, rows, count = completion_positions(batch)
    targets = input_ids[:, 1:][mask]  # (N,)

    def head_forward(hidden: torch.Tensor) -> torch.Tensor:
        if hidden.shape[:2] != input_ids.shape:
            raise RuntimeError(
                f"the model called its head on hidden states of shape {tuple(hidden.shape)}, "
                f"expected {tuple(input_ids.shape)} + (hidden,); call with chunk=0 for full logits"
            )
        token_logps = _TokenLogps.apply(hidden[:, :-1][mask], head.weight, head.bias, targets, chunk)
        return _per_sequence(token_logps, rows, count)

    head.forward = head_forward
    try:  # the model's output, not the head's value: wrappers' hooks may stand between the two
        logps = model(**model_inputs(batch)).logits
    finally:
        del head.forward
    return logps, torch.bincount(rows, minlength=count).float()
