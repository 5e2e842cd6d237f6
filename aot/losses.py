"""The AOT objective and the pairwise baselines, as pure functions of tensors.

AOT (Melnyk et al. 2024, arXiv 2406.05882) measures how much a sample U violates first-order
stochastic dominance over a sample V:

    L(U, V) = integral_0^1 h(beta * (Q_U(t) - Q_V(t))) dt

a 1-D optimal-transport cost with the convex cost h(beta (u - v)), solved by sorting: the k-th
smallest u is matched with the k-th smallest v. For |U| = |V| = n it is
``mean_k h(beta * (u_(k) - v_(k)))``; for n != m it is summed exactly over the merged quantile
grid (``aot.quantiles.quantile_pieces``). docs/objective.md states the maths in full.

Shapes: ``u`` is (n,), ``v`` is (m,); every loss is a scalar. Nothing here knows about models,
trainers or configs; ``gather=True`` is the one switch that reaches other ranks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from aot.distributed import gather_global
from aot.names import (  # noqa: F401  (SORTS, DEFAULT_SORT_STRENGTH: re-exported with the losses)
    DEFAULT_SORT_STRENGTH,
    METHOD_NAMES,
    PENALTY_NAMES,
    SORTS,
    TRL_METHODS,
    check_options,
)
from aot.quantiles import quantile_pieces
from aot.sorting import relative_soft_sort

# --- the penalties (their names: aot.names) ---------------------------------------------------


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


#: penalty name (``aot.names.PENALTY_NAMES``) -> h(z, label_smoothing): the function ``_<name>`` above
PENALTIES = {name: globals()[f"_{name}"] for name in PENALTY_NAMES}


# --- checks: the options' rule is ``aot.names.check_options`` (the config check shares it) ------


def check_values(**named: torch.Tensor) -> None:
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


# --- the objective ---------------------------------------------------------------------------


def _sorted(x: torch.Tensor, sort: str, strength: float | None) -> torch.Tensor:
    if sort == "hard":
        return torch.sort(x).values
    strength = DEFAULT_SORT_STRENGTH[sort] if strength is None else strength
    return relative_soft_sort(x, strength, method=SORTS[sort])


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
            ``"soft"`` it is relative to each sample's mean spacing.
        gather: sort over all data-parallel ranks' values (``aot.distributed.gather_global``).

    Returns:
        Scalar: ``sum_pieces length * h(beta * (u_(i) - v_(j)))`` over the merged quantile grid,
        which is ``mean_k h(beta * (u_(k) - v_(k)))`` when n == m. Half-precision inputs are
        sorted and penalised in float32 (the grid's weights overflow float16); the result has the
        inputs' dtype.
    """
    check_options(beta, penalty, label_smoothing, sort, sort_strength)
    check_values(u=u, v=v)
    if gather:
        u, v = gather_global(u), gather_global(v)
    if u.numel() == 0 or v.numel() == 0:
        raise ValueError(f"aot_loss needs non-empty u and v, got sizes {u.numel()} and {v.numel()}")
    h = PENALTIES[penalty]
    dtype = u.dtype
    compute = torch.promote_types(torch.promote_types(u.dtype, v.dtype), torch.float32)
    us, vs = _sorted(u.to(compute), sort, sort_strength), _sorted(v.to(compute), sort, sort_strength)
    n, m = us.numel(), vs.numel()
    if n == m:
        return h(beta * (us - vs), label_smoothing).mean().to(dtype)
    iu, iv, lengths, scale = quantile_pieces(n, m)
    iu, iv = iu.to(us.device), iv.to(us.device)
    weights = (lengths.double() / scale).to(device=us.device, dtype=compute)
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


def _check_pairs(policy_margins, reference_margins) -> None:
    check_values(policy_margins=policy_margins, reference_margins=reference_margins)
    if policy_margins.shape != reference_margins.shape or policy_margins.numel() == 0:
        raise ValueError(
            "policy_margins and reference_margins must be non-empty and of one shape, got "
            f"{tuple(policy_margins.shape)} and {tuple(reference_margins.shape)}"
        )


def dpo_loss(
    policy_margins: torch.Tensor,
    reference_margins: torch.Tensor,
    *,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """DPO (Rafailov et al. 2023): mean of the logistic penalty on beta * (a_i - b_i), per pair."""
    _check_pairs(policy_margins, reference_margins)
    check_options(beta, label_smoothing=label_smoothing)
    return _logistic(beta * (policy_margins - reference_margins), label_smoothing).mean()


def ipo_loss(
    policy_margins: torch.Tensor, reference_margins: torch.Tensor, *, beta: float = 0.1
) -> torch.Tensor:
    """IPO (Azar et al. 2023): mean of ((a_i - b_i) - 1 / (2 beta))^2, per pair."""
    _check_pairs(policy_margins, reference_margins)
    check_options(beta)
    return ((policy_margins - reference_margins - 1 / (2 * beta)) ** 2).mean()


#: method name (``aot.names.METHOD_NAMES``, but TRL's) -> its loss on (u, v): ``<name>_loss`` above.
#: AOT unpaired takes chosen/rejected rewards; the others take policy/reference margins
#: (``aot.names.PAIRED_ONLY`` says which rows each needs).
LOSSES = {name: globals()[f"{name}_loss"] for name in METHOD_NAMES if name not in TRL_METHODS}
