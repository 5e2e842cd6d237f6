"""The AOT objective and the pairwise baselines, as pure functions of tensors.

Paper: Melnyk et al., "Distributional Preference Alignment of LLMs via Optimal Transport"
(2024, arXiv 2406.05882); ``shared/docs/aot-math.md`` restates the maths.

AOT measures how much a sample U violates first-order stochastic dominance over a sample V:

    L(U, V) = integral_0^1 h(beta * (Q_U(t) - Q_V(t))) dt

a 1-D optimal-transport cost with the convex cost h(beta (u - v)), solved by sorting: the k-th
smallest u is matched with the k-th smallest v. For |U| = |V| = n this is
``mean_k h(beta * (u_(k) - v_(k)))``.

Where this module goes beyond the paper and TRL:

1. Unequal sizes (n != m) are exact: the two empirical quantile functions are step functions,
   and the integral is summed over their merged breakpoint grid {k/n} U {l/m} (at most
   n + m - 1 pieces, each weighted by its length). TRL requires n == m.
2. ``gather=True`` sorts over every data-parallel rank's values (the global batch), with the
   gradient scaled so that DDP's gradient averaging yields exactly the global loss's gradient.
3. Penalties beyond the logistic one (hinge, squared hinge, least squares) and two soft sorts
   (``aot.sorting``).

Shapes: ``u`` is (n,), ``v`` is (m,); the loss is a scalar. Nothing here knows about models,
trainers or configs.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.distributed as dist
import torch.nn.functional as F

from aot.sorting import relative_soft_sort

# --- the one registry of names -------------------------------------------------------------


def _logistic(z: torch.Tensor, eps: float) -> torch.Tensor:
    # (1 - eps) * softplus(-z) + eps * softplus(z): conservative DPO-style label smoothing.
    loss = F.softplus(-z)
    return loss if eps == 0 else (1 - eps) * loss + eps * F.softplus(z)


def _hinge(z: torch.Tensor, eps: float) -> torch.Tensor:
    return F.relu(1 - z)


def _squared_hinge(z: torch.Tensor, eps: float) -> torch.Tensor:
    return F.relu(1 - z) ** 2


def _least_squares(z: torch.Tensor, eps: float) -> torch.Tensor:
    return (1 - z) ** 2


#: penalty name -> h(z, label_smoothing); z = beta * (matched quantile difference)
PENALTIES = {
    "logistic": _logistic,
    "hinge": _hinge,
    "squared_hinge": _squared_hinge,
    "least_squares": _least_squares,
}
#: sort name -> how the order statistics are taken. "soft" is Blondel et al.'s L2 soft sort (PAV).
SORTS = {"hard": None, "soft": "pav", "sinkhorn": "sinkhorn"}
#: default ``sort_strength`` per soft sort (our choice). "soft" (PAV) is relative to each
#: sample's mean spacing (max - min) / (n - 1): neighbouring order statistics whose gap exceeds
#: 1 / strength spacings are pooled (``aot.sorting.relative_soft_sort``), so one default serves
#: rewards near 0 and margins of tens of nats alike. Sinkhorn's is an entropic regularisation on
#: z-scores squashed to (0, 1), where neighbouring anchors are 1/n apart.
DEFAULT_SORT_STRENGTH = {"soft": 1.0, "sinkhorn": 1e-3}


def _choice(kind: str, name: str, valid) -> None:
    if name not in valid:
        raise ValueError(f"unknown {kind} {name!r}; valid: {', '.join(valid)}")


# --- input checks ----------------------------------------------------------------------------


def _check_inputs(**named: torch.Tensor) -> None:
    """Type, dtype and shape of every tensor, then one device, then finite values."""
    for name, x in named.items():
        if not torch.is_tensor(x):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if not torch.is_floating_point(x):
            raise TypeError(f"{name} must have a floating-point dtype, got {x.dtype}")
        if x.dim() != 1:
            raise ValueError(f"{name} must be 1-D, got shape {tuple(x.shape)}")
    tensors = list(named.values())
    if any(x.device != tensors[0].device for x in tensors):
        devices = ", ".join(str(x.device) for x in tensors)
        raise ValueError(f"{' and '.join(named)} must be on the same device, got {devices}")
    # One reduction and one host sync on the hot path: a finite sum means every value is finite
    # (a non-finite sum may also be an overflow, so only then look element by element).
    if bool(torch.isfinite(sum(x.detach().sum() for x in tensors))):
        return
    for name, x in named.items():
        bad = int((~torch.isfinite(x)).sum())
        if bad:
            raise ValueError(f"{name} has {bad} NaN or inf value(s) out of {x.numel()}")


def _check_options(beta, penalty, label_smoothing, sort, sort_strength) -> None:
    _choice("penalty", penalty, PENALTIES)
    _choice("sort", sort, SORTS)
    if not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta > 0):
        raise ValueError(f"beta must be a positive finite number, got {beta!r}")
    if not (isinstance(label_smoothing, (int, float)) and 0 <= label_smoothing < 0.5):
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing!r}")
    if label_smoothing and penalty != "logistic":
        raise ValueError(f"label_smoothing applies to the logistic penalty only, not {penalty!r}")
    if sort_strength is not None and not (
        isinstance(sort_strength, (int, float)) and math.isfinite(sort_strength) and sort_strength > 0
    ):
        raise ValueError(f"sort_strength must be a positive finite number, got {sort_strength!r}")


# --- sorting, quantile grid, gathering -------------------------------------------------------


def _sorted(x: torch.Tensor, sort: str, strength: float | None) -> torch.Tensor:
    if sort == "hard":
        return torch.sort(x).values
    strength = DEFAULT_SORT_STRENGTH[sort] if strength is None else strength
    return relative_soft_sort(x, strength, method=SORTS[sort])


@lru_cache(maxsize=64)
def _quantile_pieces(n: int, m: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Pieces of the merged quantile grid of an n-sample and an m-sample step function.

    Returns (index into sorted u, index into sorted v, piece length in units of 1/L, L).
    Integer arithmetic on the scale L = lcm(n, m) keeps the breakpoints exact.
    """
    lcm = n * m // math.gcd(n, m)
    ends = torch.unique(torch.cat([torch.arange(1, n + 1) * (lcm // n), torch.arange(1, m + 1) * (lcm // m)]))
    # On the piece (prev, end] (in units of 1/L), Q_U is u_(ceil(end * n / L)) (1-based).
    iu = (ends - 1) // (lcm // n)
    iv = (ends - 1) // (lcm // m)
    return iu, iv, torch.diff(ends, prepend=torch.zeros(1, dtype=ends.dtype)), lcm


class _GatherWithGrad(torch.autograd.Function):
    """all_gather of 1-D tensors of possibly different lengths per rank.

    Backward returns this rank's slice of the gradient times the world size. Every rank then
    computes the same global loss, so its gradient w.r.t. the gathered tensor is the same on all
    ranks; the factor W undoes DDP's averaging, so averaged gradients equal the global loss's.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        world, rank = dist.get_world_size(), dist.get_rank()
        sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(world)]
        dist.all_gather(sizes, torch.tensor([x.numel()], device=x.device))
        sizes = [int(s) for s in sizes]
        padded = x.new_zeros(max(sizes))
        padded[: x.numel()] = x
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded)
        start = sum(sizes[:rank])
        ctx.bounds, ctx.world = (start, start + x.numel()), world
        return torch.cat([p[:s] for p, s in zip(parts, sizes)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        start, stop = ctx.bounds
        return grad[start:stop] * ctx.world


def gather_global(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` over all ranks in rank order (identity outside torch.distributed)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)


# --- the objective ---------------------------------------------------------------------------


def aot_loss(
    u: torch.Tensor,
    v: torch.Tensor,
    *,
    beta: float = 0.01,
    penalty: str = "logistic",
    label_smoothing: float = 0.0,
    sort: str = "hard",
    sort_strength: float | None = None,
    gather: bool = False,
) -> torch.Tensor:
    """AOT violation of "U dominates V in the first order".

    Args:
        u: (n,) float values that should dominate (chosen rewards, or policy margins).
        v: (m,) float values to be dominated (rejected rewards, or reference margins).
        beta: scale of the quantile differences inside the penalty (paper: 0.01).
        penalty: one of ``PENALTIES``: h(z) with z = beta * (Q_U(t) - Q_V(t)).
        label_smoothing: eps of the logistic penalty (0 <= eps < 0.5).
        sort: ``"hard"`` (torch.sort; gradient through the order statistics), ``"soft"``
            (L2 soft sort by PAV) or ``"sinkhorn"`` (entropic OT soft sort).
        sort_strength: soft-sort regularisation; ``None`` takes ``DEFAULT_SORT_STRENGTH``. For
            ``"soft"`` it is relative to each sample's mean spacing: gaps wider than
            ``1 / sort_strength`` spacings are pooled (``aot.sorting.relative_soft_sort``).
        gather: sort over all data-parallel ranks' values (see ``gather_global``).

    Returns:
        Scalar: ``sum_pieces length * h(beta * (u_(i) - v_(j)))`` over the merged quantile grid,
        which is ``mean_k h(beta * (u_(k) - v_(k)))`` when n == m.
    """
    _check_options(beta, penalty, label_smoothing, sort, sort_strength)
    _check_inputs(u=u, v=v)
    if gather:
        u, v = gather_global(u), gather_global(v)
    if u.numel() == 0 or v.numel() == 0:
        raise ValueError(f"aot_loss needs non-empty u and v, got sizes {u.numel()} and {v.numel()}")
    h = PENALTIES[penalty]
    # float16/bf16 values are sorted and penalised in float32: the piece weights of the
    # unequal-size grid (up to n * m) overflow float16 and round in bf16.
    dtype = u.dtype
    acc = torch.promote_types(torch.promote_types(u.dtype, v.dtype), torch.float32)
    us, vs = _sorted(u.to(acc), sort, sort_strength), _sorted(v.to(acc), sort, sort_strength)
    n, m = us.numel(), vs.numel()
    if n == m:
        return h(beta * (us - vs), label_smoothing).mean().to(dtype)
    iu, iv, lengths, scale = _quantile_pieces(n, m)
    iu, iv = iu.to(us.device), iv.to(us.device)
    weights = (lengths.double() / scale).to(device=us.device, dtype=acc)
    return (weights * h(beta * (us[iu] - vs[iv]), label_smoothing)).sum().to(dtype)


def aot_unpaired_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, **kw) -> torch.Tensor:
    """AOT unpaired: implicit rewards of chosen samples should dominate those of rejected ones.

    ``chosen_rewards`` (n,) and ``rejected_rewards`` (m,) are ``logp_policy - logp_ref`` per
    sample; they need not share prompts, and n may differ from m.
    """
    return aot_loss(chosen_rewards, rejected_rewards, **kw)


def aot_paired_loss(policy_margins: torch.Tensor, reference_margins: torch.Tensor, **kw) -> torch.Tensor:
    """AOT paired: policy margins ``logp(y+) - logp(y-)`` (n,) should dominate the reference's (n,)."""
    return aot_loss(policy_margins, reference_margins, **kw)


# --- pairwise baselines (TRL's conventions) ----------------------------------------------------


def _check_pairs(policy_margins, reference_margins, beta) -> None:
    _check_inputs(policy_margins=policy_margins, reference_margins=reference_margins)
    if policy_margins.shape != reference_margins.shape or policy_margins.numel() == 0:
        raise ValueError(
            "policy_margins and reference_margins must be non-empty and of one shape, got "
            f"{tuple(policy_margins.shape)} and {tuple(reference_margins.shape)}"
        )
    if not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta > 0):
        raise ValueError(f"beta must be a positive finite number, got {beta!r}")


def dpo_loss(
    policy_margins: torch.Tensor,
    reference_margins: torch.Tensor,
    *,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """DPO (Rafailov et al. 2023): mean of the logistic penalty on beta * (a_i - b_i), per pair."""
    _check_pairs(policy_margins, reference_margins, beta)
    _check_options(beta, "logistic", label_smoothing, "hard", None)
    return _logistic(beta * (policy_margins - reference_margins), label_smoothing).mean()


def ipo_loss(
    policy_margins: torch.Tensor, reference_margins: torch.Tensor, *, beta: float = 0.1
) -> torch.Tensor:
    """IPO (Azar et al. 2023): mean of ((a_i - b_i) - 1 / (2 beta))^2, per pair."""
    _check_pairs(policy_margins, reference_margins, beta)
    return ((policy_margins - reference_margins - 1 / (2 * beta)) ** 2).mean()


# --- diagnostics -------------------------------------------------------------------------------


@torch.no_grad()
def reward_accuracy(chosen: torch.Tensor, rejected: torch.Tensor, paired: bool) -> float:
    """Paired: share of pairs where chosen > rejected. Unpaired: probability that a random chosen
    value beats a random rejected one (over all n x m cross pairs, by sorting). Ties lose."""
    if paired:
        return float((chosen > rejected).double().mean())
    below = torch.searchsorted(torch.sort(rejected).values, chosen, side="left")  # rejected < each chosen
    return float(below.double().mean() / len(rejected))


@torch.no_grad()
def fsd_violation(u: torch.Tensor, v: torch.Tensor) -> float:
    """Fraction of quantile levels t in (0, 1) where Q_U(t) <= Q_V(t).

    0 means U strictly dominates V at every level; two equal samples (a policy still equal to
    its reference, say) score 1. Ties count as violations, as in reward accuracy's ``>``.
    """
    _check_inputs(u=u, v=v)
    if u.numel() == 0 or v.numel() == 0:
        raise ValueError("fsd_violation needs non-empty u and v")
    us, vs = torch.sort(u.double().cpu()).values, torch.sort(v.double().cpu()).values
    iu, iv, lengths, scale = _quantile_pieces(us.numel(), vs.numel())
    return int((lengths * (us[iu] <= vs[iv])).sum()) / scale  # exact: integer lengths


# --- training methods ---------------------------------------------------------------------------

#: method name -> loss on (u, v). AOT unpaired takes chosen/rejected rewards; the others take
#: policy/reference margins and so need paired rows. "kto" trains with TRL's KTOTrainer (its KL
#: estimate needs a forward pass of its own), so it has no function here.
LOSSES = {
    "aot_unpaired": aot_unpaired_loss,
    "aot_paired": aot_paired_loss,
    "dpo": dpo_loss,
    "ipo": ipo_loss,
    "kto": None,
}
PAIRED_ONLY = frozenset({"aot_paired", "dpo", "ipo"})
