"""How far apart two reward distributions are, as numbers a log can show (no gradients)."""

from __future__ import annotations

import torch

from aot.losses import check_values
from aot.quantiles import quantile_pieces


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
    check_values(u=u, v=v)
    if u.numel() == 0 or v.numel() == 0:
        raise ValueError("fsd_violation needs non-empty u and v")
    us, vs = torch.sort(u.double().cpu()).values, torch.sort(v.double().cpu()).values
    iu, iv, lengths, scale = quantile_pieces(us.numel(), vs.numel())
    return int((lengths * (us[iu] <= vs[iv])).sum()) / scale  # exact: integer lengths
