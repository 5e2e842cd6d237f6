"""Every bad input raises a clear error instead of returning NaN."""

import pytest
import torch

from aot.losses import PENALTIES, SORTS, aot_loss, dpo_loss, ipo_loss

GOOD = torch.tensor([0.5, -1.0, 2.0])


@pytest.mark.parametrize(
    "u,v,exc,match",
    [
        (torch.tensor([]), GOOD, ValueError, "non-empty"),
        (GOOD, torch.tensor([]), ValueError, "non-empty"),
        (GOOD.reshape(3, 1), GOOD, ValueError, "1-D"),
        (torch.tensor(1.0), GOOD, ValueError, "1-D"),
        (GOOD, torch.tensor([1.0, float("nan")]), ValueError, "NaN or inf"),
        (torch.tensor([float("inf"), 1.0]), GOOD, ValueError, "NaN or inf"),
        (torch.tensor([1, 2, 3]), GOOD, TypeError, "floating-point"),
        (torch.tensor([True, False]), GOOD, TypeError, "floating-point"),
        ([1.0, 2.0], GOOD, TypeError, "torch.Tensor"),
        (GOOD, GOOD.to("meta"), ValueError, "same device"),
    ],
)
def test_bad_tensors(u, v, exc, match):
    with pytest.raises(exc, match=match):
        aot_loss(u, v)


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(penalty="exponential"), ", ".join(PENALTIES)),
        (dict(sort="bitonic"), ", ".join(SORTS)),
        (dict(beta=0.0), "beta"),
        (dict(beta=float("nan")), "beta"),
        (dict(label_smoothing=0.5), "label_smoothing"),
        (dict(penalty="hinge", label_smoothing=0.1), "logistic penalty only"),
        (dict(sort="soft", sort_strength=-1.0), "sort_strength"),
    ],
)
def test_bad_options(kw, match):
    with pytest.raises(ValueError, match=match):
        aot_loss(GOOD, GOOD, **kw)


def test_baselines_reject_mismatched_pairs():
    for fn in (dpo_loss, ipo_loss):
        with pytest.raises(ValueError, match="one shape"):
            fn(GOOD, GOOD[:2])
        with pytest.raises(ValueError, match="NaN or inf"):
            fn(GOOD, torch.tensor([1.0, 2.0, float("nan")]))
