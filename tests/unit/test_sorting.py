"""Soft sorts: check values from docs/objective.md, limits, invariants, exact backward, oracles."""

import numpy as np
import pytest
import torch
from scipy.optimize import isotonic_regression

from aot.sorting import SOFT_SORT_METHODS, _pav_nonincreasing, soft_sort


def test_check_values_from_the_math_notes():
    x = torch.tensor([5.0, 1.0, 2.0])
    assert torch.allclose(soft_sort(x, 1.0), torch.tensor([5 / 3, 8 / 3, 11 / 3]))
    assert torch.allclose(soft_sort(x, 0.1), torch.tensor([1.0, 2.0, 5.0]))


@pytest.mark.parametrize("seed", range(5))
def test_pav_matches_scipy_isotonic_regression(seed):
    y = np.random.default_rng(seed).normal(size=200).cumsum()  # long runs, many pools
    means, sizes = _pav_nonincreasing(y.tolist())
    ours = np.repeat(means, sizes)
    oracle = isotonic_regression(y, increasing=False).x
    np.testing.assert_allclose(ours, oracle, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method", SOFT_SORT_METHODS)
def test_tends_to_hard_sort_and_keeps_the_sum(method):
    # PAV pools neighbours whose gap exceeds 1 / strength, so the scale of x matters for it.
    x = 10 * torch.randn(64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    hard = torch.sort(x).values
    strengths = [10.0, 1.0, 0.1, 1e-3] if method == "pav" else [1e-1, 1e-2, 1e-3, 1e-4, 1e-6]
    errors = []
    for s in strengths:
        out = soft_sort(x, s, method=method)
        assert out.sum().item() == pytest.approx(x.sum().item(), abs=1e-9)
        errors.append((out - hard).abs().max().item())
    assert all(later <= earlier + 1e-9 for earlier, later in zip(errors, errors[1:])) and errors[0] > 1.0
    assert errors[-1] < (1e-9 if method == "pav" else 1e-3)


def test_pav_output_is_sorted_and_equals_hard_sort_when_far_apart():
    x = torch.tensor([10.0, -3.0, 4.0, 0.5])
    assert torch.equal(soft_sort(x, 1e-3), torch.sort(x).values)
    out = soft_sort(torch.randn(100, generator=torch.Generator().manual_seed(1)), 0.5)
    assert bool((out[1:] >= out[:-1] - 1e-6).all())


@pytest.mark.parametrize("method", SOFT_SORT_METHODS)
def test_batched_rows_equal_rowwise(method):
    x = torch.randn(3, 10, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    batched = soft_sort(x, 0.3, method=method)
    for r in range(3):
        assert torch.allclose(batched[r], soft_sort(x[r], 0.3, method=method))


@pytest.mark.parametrize("method", SOFT_SORT_METHODS)
def test_gradcheck_soft_sort(method):
    x = torch.randn(2, 7, generator=torch.Generator().manual_seed(3), dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: soft_sort(t, 0.4, method=method, n_iter=50), (x,))


def test_pav_backward_is_block_averaging():
    # Strength 1 on [5, 1, 2] pools everything into one block: each output moves by the mean of
    # the input's perturbation, so d(sum of outputs)/dx = 1 and d(out_0)/dx = 1/3 everywhere.
    x = torch.tensor([5.0, 1.0, 2.0], requires_grad=True)
    soft_sort(x, 1.0)[0].backward()
    assert torch.allclose(x.grad, torch.full((3,), 1 / 3))


@pytest.mark.parametrize(
    "bad,exc,match",
    [
        (torch.tensor([1, 2]), TypeError, "floating-point"),
        (torch.tensor([]), ValueError, "non-empty"),
    ],
)
def test_soft_sort_rejects_bad_input(bad, exc, match):
    with pytest.raises(exc, match=match):
        soft_sort(bad, 0.1)


def test_soft_sort_rejects_bad_options():
    x = torch.tensor([1.0, 2.0])
    with pytest.raises(ValueError, match="pav, sinkhorn"):
        soft_sort(x, 0.1, method="bitonic")
    with pytest.raises(ValueError, match="strength"):
        soft_sort(x, 0.0)


# --- the strength on the sample's own scale (aot.losses' soft sort) ------------------------------


@pytest.mark.parametrize("spread", [100.0, 0.01])
def test_default_soft_sort_is_neither_hard_nor_one_block_at_any_scale(spread):
    """Margins spread over 100 nats and rewards spread over 0.01 get the same smoothing: the
    default pools some neighbours and not others (the old strength in nats made the first one
    block and left the second a hard sort)."""
    from aot.losses import DEFAULT_SORT_STRENGTH, _sorted

    z = torch.randn(16, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    x = spread * (z - z.min()) / (z.max() - z.min())
    out = _sorted(x, "soft", None)
    # Within a PAV block neighbouring outputs are exactly 1 / strength spacings apart; between
    # blocks they are not. One block: every gap is that step; hard sort: out == sort(x).
    step = spread / 15 / DEFAULT_SORT_STRENGTH["soft"]
    blocks = 1 + int(((out.diff() - step).abs() > 1e-9 * spread).sum())
    assert not torch.allclose(out, torch.sort(x).values)
    assert 2 <= blocks <= 15, blocks
    assert torch.allclose(out / spread, _sorted(z, "soft", None).sub(z.min()) / (z.max() - z.min()))


def test_relative_soft_sort_is_scale_equivariant_and_keeps_the_sum():
    from aot.sorting import relative_soft_sort

    x = torch.randn(50, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    out = relative_soft_sort(x)
    assert torch.allclose(relative_soft_sort(1e4 * x + 3.0), 1e4 * out + 3.0)
    assert out.sum().item() == pytest.approx(x.sum().item(), abs=1e-9)
    assert torch.equal(relative_soft_sort(torch.full((5,), 2.0)), torch.full((5,), 2.0))


# --- numerics in low precision ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "n,scale,strength,relative",
    [(256, 0.01, 1e-3, False), (4096, 1.0, 1.0, False), (4096, 1.0, 1.0, True), (1000, 30.0, 1.0, True)],
)
def test_float32_and_bf16_inputs_match_a_float64_reference(n, scale, strength, relative):
    from aot.sorting import relative_soft_sort

    sort = relative_soft_sort if relative else soft_sort
    x64 = scale * torch.randn(n, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    spread = (x64.max() - x64.min()).item()
    for dtype, tol in ((torch.float32, 1e-5 * spread), (torch.bfloat16, None)):
        x = x64.to(dtype)
        ref = sort(x.double(), strength)  # the same (rounded) input, in float64 throughout
        out = sort(x, strength)
        assert out.dtype == dtype
        assert bool((out[1:] >= out[:-1]).all()), f"{dtype} output not sorted"
        err = (out.double() - ref).abs().max().item()
        # float32: within 1e-5 of the spread; bf16: within the output's own rounding (half an ulp)
        limit = tol if tol is not None else (ref.abs() * 2.0**-8).max().item()
        assert err <= limit, (dtype, err, limit)


def test_sinkhorn_refuses_sizes_it_cannot_serve():
    from aot.sorting import SINKHORN_MAX_N

    soft_sort(torch.randn(SINKHORN_MAX_N, dtype=torch.float64), 1e-3, method="sinkhorn")
    with pytest.raises(ValueError, match=r"n = \d+ exceeds its limit .* sort='soft'"):
        soft_sort(torch.randn(SINKHORN_MAX_N + 1), 1e-3, method="sinkhorn")
