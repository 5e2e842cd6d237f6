"""Differentiable sorting for the AOT objective, in plain PyTorch (no compiled extension).

Two relaxations of ascending sort along the last dimension:

- ``method="pav"``: Blondel, Teboul, Berthet, Djolonga, "Fast Differentiable Sorting and
  Ranking" (ICML 2020), with L2 regularisation. The soft sort of ``x`` at strength ``eps`` is
  the Euclidean projection of ``rho / eps`` (``rho = (n, n-1, ..., 1)``) onto the permutahedron
  of ``x``. With ``w = sort(x, descending)`` and ``y = rho / eps - w`` it equals
  ``rho / eps - iso(y)``, where ``iso`` is the non-increasing isotonic regression of ``y``,
  solved exactly in O(n) by pool-adjacent-violators (PAV) after the O(n log n) sort.
  ``iso(y)`` replaces ``y`` by its means over a partition into contiguous blocks, so its
  Jacobian is the block-averaging matrix: the backward pass averages the incoming gradient
  within each block (exact, no unrolling).
- ``method="sinkhorn"``: Cuturi, Teboul, Vert, "Differentiable Ranking and Sorting using
  Optimal Transport" (NeurIPS 2019). Entropic OT between the values (squashed to (0, 1) by a
  sigmoid of their z-score, uniform weights) and n evenly spaced anchors in (0, 1); the soft
  sorted values are the barycentric projection ``n * P^T x``. Gradients by autograd through
  the (log-domain) Sinkhorn iterations. O(n^2) memory and time per iteration.

Both keep the sum of their input and tend to the hard sort as ``strength -> 0``. The
``strength`` of PAV is in the units of ``x`` (adjacent order statistics whose gap exceeds
``1 / strength`` are pooled); that of Sinkhorn is the entropic regularisation on the squashed
(0, 1) scale, so the two are not interchangeable. ``aot.losses`` puts PAV's strength on the
sample's own scale (``relative_soft_sort``).

Numerics: both compute in float64 whatever the input dtype and return the input dtype. PAV's
``rho / eps - iso(rho / eps - w)`` subtracts nearly equal large numbers when ``eps`` is small or
n is large; in float32 that loses the order of the output, in bf16 all of it.

Check values (docs/objective.md): ``soft_sort([5, 1, 2], 1.0) == [1.667, 2.667, 3.667]`` and
``soft_sort([5, 1, 2], 0.1) == [1, 2, 5]``.
"""

from __future__ import annotations

import math

import torch

from aot.names import SINKHORN_MAX_N  # the largest n Sinkhorn accepts (named there: the config checks it)

SOFT_SORT_METHODS = ("pav", "sinkhorn")


def _pav_nonincreasing(y: list[float]) -> tuple[list[float], list[int]]:
    """Non-increasing isotonic regression of ``y`` by pool-adjacent-violators.

    Returns the block means and block sizes, left to right. Pure Python on a list: the loop is
    inherently sequential and a list beats per-element tensor indexing by two orders of
    magnitude.
    """
    sums: list[float] = []
    sizes: list[int] = []
    for value in y:
        s, c = value, 1
        # Merge while the previous block's mean is below this one's (a violation of
        # non-increasing order); compare means by cross-multiplying the sums.
        while sums and sums[-1] * c < s * sizes[-1]:
            s += sums.pop()
            c += sizes.pop()
        sums.append(s)
        sizes.append(c)
    return [s / c for s, c in zip(sums, sizes)], sizes


class _IsotonicNonIncreasing(torch.autograd.Function):
    """Row-wise non-increasing isotonic regression of a (rows, n) tensor with exact backward."""

    @staticmethod
    def forward(ctx, y: torch.Tensor) -> torch.Tensor:
        rows, n = y.shape
        values = y.detach().to("cpu", torch.float64).tolist()
        out = torch.empty(rows, n, dtype=torch.float64)
        block_ids = torch.empty(rows, n, dtype=torch.long)
        offset = 0  # block ids are global across rows so one scatter serves the whole batch
        for r, row in enumerate(values):
            means, sizes = _pav_nonincreasing(row)
            sizes_t = torch.tensor(sizes)
            out[r] = torch.repeat_interleave(torch.tensor(means, dtype=torch.float64), sizes_t)
            block_ids[r] = torch.repeat_interleave(torch.arange(offset, offset + len(sizes)), sizes_t)
            offset += len(sizes)
        block_ids = block_ids.to(y.device)
        ctx.save_for_backward(block_ids)
        ctx.num_blocks = offset
        return out.to(device=y.device, dtype=y.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (block_ids,) = ctx.saved_tensors
        flat_ids = block_ids.reshape(-1)
        sums = torch.zeros(ctx.num_blocks, dtype=grad.dtype, device=grad.device)
        sums.index_add_(0, flat_ids, grad.reshape(-1))
        counts = torch.bincount(flat_ids, minlength=ctx.num_blocks).to(grad.dtype)
        return (sums / counts)[flat_ids].reshape(grad.shape)


def _soft_sort_pav(x: torch.Tensor, strength: float) -> torch.Tensor:
    n = x.shape[-1]
    rows = x.reshape(-1, n)
    w, _ = torch.sort(rows, dim=-1, descending=True)  # gradient flows through the order stats
    rho = torch.arange(n, 0, -1, dtype=x.dtype, device=x.device) / strength
    descending = rho - _IsotonicNonIncreasing.apply(rho - w)
    return descending.flip(-1).reshape(x.shape)


def _soft_sort_sinkhorn(x: torch.Tensor, strength: float, n_iter: int) -> torch.Tensor:
    n = x.shape[-1]
    rows = x.reshape(-1, n)  # (R, n)
    if n == 1:
        return x.clone()
    scale = rows.std(dim=-1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)
    squashed = torch.sigmoid((rows - rows.mean(dim=-1, keepdim=True)) / scale)  # (R, n)
    anchors = (torch.arange(n, dtype=x.dtype, device=x.device) + 0.5) / n  # (n,)
    cost = (squashed.unsqueeze(-1) - anchors) ** 2  # (R, n values, n anchors)
    log_w = -math.log(n)  # uniform weights on both sides
    f = torch.zeros_like(rows)  # (R, n) dual potentials (scaled by eps) of the values
    g = torch.zeros_like(rows)  # (R, n) dual potentials (scaled by eps) of the anchors
    # Epsilon scaling: anneal from eps = 1 (the cost's own scale) down to `strength` over the
    # first half of the iterations, warm-starting the potentials; plain Sinkhorn at a small eps
    # needs O(1/eps) iterations to converge.
    anneal = max(1, n_iter // 2)
    for k in range(n_iter):
        eps = max(strength, strength ** min(1.0, k / anneal))
        g = eps * log_w - eps * torch.logsumexp((f.unsqueeze(-1) - cost) / eps, dim=-2)
        f = eps * log_w - eps * torch.logsumexp((g.unsqueeze(-2) - cost) / eps, dim=-1)
    # Ending on the row update makes each value's mass exactly 1/n, which keeps the sum.
    plan = torch.exp((f.unsqueeze(-1) + g.unsqueeze(-2) - cost) / strength)  # (R, n, n)
    return (n * torch.einsum("rij,ri->rj", plan, rows)).reshape(x.shape)


def soft_sort(x: torch.Tensor, strength: float = 1.0, method: str = "pav", n_iter: int = 200) -> torch.Tensor:
    """Ascending soft sort of ``x`` along its last dimension.

    Args:
        x: float tensor of shape (..., n).
        strength: regularisation (> 0); smaller is closer to the hard sort.
        method: ``"pav"`` (L2, exact O(n log n)) or ``"sinkhorn"`` (entropic OT, O(n^2)).
        n_iter: Sinkhorn iterations (ignored by ``"pav"``).

    Returns:
        Tensor of the shape of ``x``, non-decreasing along the last dimension for ``"pav"``.
    """
    if not torch.is_tensor(x) or not torch.is_floating_point(x):
        raise TypeError(f"soft_sort expects a floating-point tensor, got {getattr(x, 'dtype', type(x))}")
    if x.dim() == 0 or x.shape[-1] == 0:
        raise ValueError(f"soft_sort needs a non-empty last dimension, got shape {tuple(x.shape)}")
    if not (isinstance(strength, (int, float)) and math.isfinite(strength) and strength > 0):
        raise ValueError(f"sort strength must be a positive finite number, got {strength!r}")
    if method not in SOFT_SORT_METHODS:
        raise ValueError(f"unknown soft sort method {method!r}; valid: {', '.join(SOFT_SORT_METHODS)}")
    if method == "sinkhorn" and x.shape[-1] > SINKHORN_MAX_N:
        raise ValueError(
            f"the Sinkhorn soft sort is O(n^2) per iteration, unrolled through autograd: n = {x.shape[-1]} "
            f"exceeds its limit of {SINKHORN_MAX_N} (docs/benchmarks.md has its timings). "
            f"Use sort='soft' (PAV: exact gradient in O(n log n)) or sort='hard'"
        )
    x64 = x.double()  # see "Numerics" above
    if method == "pav":
        out = _soft_sort_pav(x64, float(strength))
    else:
        out = _soft_sort_sinkhorn(x64, float(strength), n_iter)
    return out.to(x.dtype)


def relative_soft_sort(x: torch.Tensor, strength: float = 1.0, method: str = "pav") -> torch.Tensor:
    """Soft sort of a 1-D sample (n,) whose strength is relative to the sample's own spacing.

    PAV's strength is in the units of ``x``, so one number means opposite things on rewards near
    0 (hard sort) and on margins spread over tens of nats (one block). Here ``x`` is divided by
    its mean spacing ``(max - min) / (n - 1)`` before the soft sort and multiplied back after
    (the gradient flows through the spacing too: it is the exact gradient of this function). At
    strength s, adjacent order statistics whose gap exceeds 1 / s mean spacings are pooled,
    whatever the units (at s = 1, typically about half as many blocks as samples: never the hard
    sort, never one block; tests/unit/test_sorting.py). The Sinkhorn sort already works on
    z-scores, so it is passed through.
    """
    if x.dim() != 1:
        raise ValueError(f"relative_soft_sort sorts one sample: expected shape (n,), got {tuple(x.shape)}")
    n = x.shape[-1]
    if method != "pav" or n < 2:
        return soft_sort(x, strength, method)
    x64 = x.double()
    spacing = (x64.max() - x64.min()) / (n - 1)
    if spacing == 0:  # all equal: every sort is the identity
        return x.clone()
    return (soft_sort(x64 / spacing, strength, method) * spacing).to(x.dtype)
