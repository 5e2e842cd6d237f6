"""Summaries shared by the results table and the experiment: mean and spread over seeds."""

from __future__ import annotations

import statistics


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (``None`` for a single value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def format_mean_std(mean: float, std: float | None, digits: int = 1) -> str:
    """``"31.3"`` for one value, ``"31.3 ± 0.4"`` for several."""
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"
