"""Empirical quantile functions: the merged grid on which two of them are compared, and the
quantile levels the diagnostics report."""

from __future__ import annotations

import math
from functools import lru_cache

import torch

#: quantile levels reported by the diagnostics and the experiment
LEVELS = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95)


@lru_cache(maxsize=64)
def quantile_pieces(n: int, m: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """The pieces on which the quantile functions of an n-sample and an m-sample are both constant.

    The step functions have breakpoints at k/n and l/m; their merged grid has at most n + m - 1
    pieces. Returns (index into the sorted n-sample, index into the sorted m-sample, piece length
    in units of 1/L, L), with L = lcm(n, m) so that every breakpoint is an integer. Example: n = 2,
    m = 3 gives indices (0, 0), (0, 1), (1, 1), (1, 2) with lengths 2, 1, 1, 2 over L = 6.
    """
    lcm = n * m // math.gcd(n, m)
    ends = torch.unique(torch.cat([torch.arange(1, n + 1) * (lcm // n), torch.arange(1, m + 1) * (lcm // m)]))
    # On the piece (prev, end] (in units of 1/L), Q_U is u_(ceil(end * n / L)) (1-based).
    iu = (ends - 1) // (lcm // n)
    iv = (ends - 1) // (lcm // m)
    return iu, iv, torch.diff(ends, prepend=torch.zeros(1, dtype=ends.dtype)), lcm


def quantile_table(x, levels=LEVELS) -> dict[str, float]:
    """``{"q05": ..., "q50": ..., ...}`` of a sample (a tensor or a list of numbers)."""
    x = torch.as_tensor(x, dtype=torch.float64)
    q = torch.quantile(x, torch.tensor(levels, dtype=torch.float64))
    return {f"q{int(round(p * 100)):02d}": float(v) for p, v in zip(levels, q)}
