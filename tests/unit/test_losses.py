"""The AOT objective against independent oracles: brute force over permutations, an exact LP,
TRL 1.16's own loss code, hand-worked values, and gradcheck."""

import itertools

import numpy as np
import pytest
import torch
from scipy.optimize import linprog

from aot.losses import (
    PENALTIES,
    SORTS,
    aot_loss,
    aot_paired_loss,
    aot_unpaired_loss,
    dpo_loss,
    ipo_loss,
)
from aot.metrics import fsd_violation, reward_accuracy

BETAS = [0.01, 0.5, 3.0]


def penalty_np(name, z, eps=0.0):
    """The penalties written out again in numpy, from docs/objective.md's table."""
    softplus = lambda x: np.logaddexp(0.0, x)
    return {
        "logistic": (1 - eps) * softplus(-z) + eps * softplus(z),
        "hinge": np.maximum(0.0, 1 - z),
        "squared_hinge": np.maximum(0.0, 1 - z) ** 2,
        "least_squares": (1 - z) ** 2,
    }[name]


def values(n, seed, scale=100.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, generator=g, dtype=torch.float64) * scale


@pytest.mark.parametrize("penalty", list(PENALTIES))
@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("n", [1, 2, 3, 4, 6])
def test_sorted_matching_is_the_best_permutation(penalty, beta, n):
    u, v = values(n, 1), values(n, 2)
    cost = penalty_np(penalty, beta * (u.numpy()[:, None] - v.numpy()[None, :]))  # (n, n)
    best = min(cost[np.arange(n), list(p)].mean() for p in itertools.permutations(range(n)))
    assert aot_loss(u, v, beta=beta, penalty=penalty).item() == pytest.approx(best, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("penalty", list(PENALTIES))
@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("n,m", [(1, 4), (2, 3), (3, 5), (4, 6), (7, 3), (5, 8)])
def test_unequal_sizes_equal_the_transport_lp(penalty, beta, n, m):
    u, v = values(n, 3), values(m, 4)
    cost = penalty_np(penalty, beta * (u.numpy()[:, None] - v.numpy()[None, :]))  # (n, m)
    # Couplings P >= 0 with row sums 1/n and column sums 1/m; minimise <P, cost>.
    a_eq = np.zeros((n + m, n * m))
    for i in range(n):
        a_eq[i, i * m : (i + 1) * m] = 1
    for j in range(m):
        a_eq[n + j, j::m] = 1
    b_eq = np.r_[np.full(n, 1 / n), np.full(m, 1 / m)]
    lp = linprog(cost.ravel(), A_eq=a_eq, b_eq=b_eq, bounds=(0, None), method="highs")
    assert lp.status == 0
    assert aot_loss(u, v, beta=beta, penalty=penalty).item() == pytest.approx(lp.fun, rel=1e-8, abs=1e-10)


def test_unequal_sizes_hand_worked():
    # Q_U steps at 1/2, Q_V at 1/3 and 2/3: pieces (0,1/3] (1/3,1/2] (1/2,2/3] (2/3,1].
    u, v = torch.tensor([0.0, 10.0]), torch.tensor([1.0, 2.0, 3.0])
    diffs = torch.tensor([0 - 1, 0 - 2, 10 - 2, 10 - 3.0])
    weights = torch.tensor([1 / 3, 1 / 6, 1 / 6, 1 / 3])
    expected = (weights * torch.relu(1 - 0.5 * diffs)).sum()
    assert torch.allclose(aot_loss(u, v, beta=0.5, penalty="hinge"), expected)
    # Duplicating every sample leaves both quantile functions, hence the loss, unchanged.
    assert torch.allclose(aot_loss(u.repeat(3), v.repeat(2), beta=0.5), aot_loss(u, v, beta=0.5))


def test_label_smoothing_matches_the_formula():
    u, v = values(6, 5, 10.0), values(6, 6, 10.0)
    z = 0.3 * (torch.sort(u).values - torch.sort(v).values).numpy()
    expected = penalty_np("logistic", z, eps=0.2).mean()
    assert aot_loss(u, v, beta=0.3, label_smoothing=0.2).item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("sort", list(SORTS))
@pytest.mark.parametrize("n,m", [(8, 8), (6, 9)])
def test_shuffling_leaves_the_loss_unchanged(sort, n, m):
    u, v = values(n, 7, 3.0), values(m, 8, 3.0)
    ref = aot_loss(u, v, beta=0.7, sort=sort)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        pu, pv = torch.randperm(n, generator=g), torch.randperm(m, generator=g)
        assert torch.allclose(aot_loss(u[pu], v[pv], beta=0.7, sort=sort), ref, rtol=1e-12, atol=1e-12)


def test_single_pair_paired_aot_is_dpo():
    a, b = torch.tensor([3.2]), torch.tensor([-1.5])
    for eps in (0.0, 0.1):
        dpo = (
            -torch.nn.functional.logsigmoid(0.1 * (a - b)) * (1 - eps)
            - torch.nn.functional.logsigmoid(-0.1 * (a - b)) * eps
        )
        assert torch.allclose(aot_paired_loss(a, b, beta=0.1, label_smoothing=eps), dpo.mean())
        assert torch.allclose(dpo_loss(a, b, beta=0.1, label_smoothing=eps), dpo.mean())


def test_wrappers_are_aot_loss():
    u, v = values(5, 9), values(7, 10)
    kw = dict(beta=0.02, penalty="squared_hinge")
    assert torch.equal(aot_unpaired_loss(u, v, **kw), aot_loss(u, v, **kw))
    assert torch.equal(aot_paired_loss(u[:5], v[:5], **kw), aot_loss(u[:5], v[:5], **kw))


def test_ipo_hand_worked():
    a, b = torch.tensor([1.0, 2.0]), torch.tensor([0.0, 0.0])
    # (1 - 5)^2 = 16, (2 - 5)^2 = 9 at beta = 0.1 (target margin 1 / (2 beta) = 5)
    assert ipo_loss(a, b, beta=0.1).item() == pytest.approx(12.5)


def test_fsd_violation_hand_worked():
    assert fsd_violation(torch.tensor([2.0, 3.0]), torch.tensor([1.0, 2.0])) == 0.0
    assert fsd_violation(torch.tensor([0.0, 3.0]), torch.tensor([1.0, 2.0])) == 0.5
    assert fsd_violation(torch.tensor([1.0, 2.0]), torch.tensor([2.0, 1.0])) == 1.0  # equal: ties violate
    # Pieces (0,1/3]: 0<1 violated; (1/3,1/2]: 0<2 violated; the rest not: 1/3 + 1/6.
    assert fsd_violation(torch.tensor([0.0, 10.0]), torch.tensor([1.0, 2.0, 3.0])) == pytest.approx(0.5)


# --- gradients -------------------------------------------------------------------------------


@pytest.mark.parametrize("penalty", list(PENALTIES))
@pytest.mark.parametrize("sort", list(SORTS))
@pytest.mark.parametrize("n,m", [(6, 6), (5, 7)])
def test_gradcheck(penalty, sort, n, m):
    # Distinct values well apart (no ties), beta such that no z sits on a hinge kink.
    u = (torch.randperm(20, generator=torch.Generator().manual_seed(n))[:n].double() * 0.37).requires_grad_()
    v = (
        torch.randperm(20, generator=torch.Generator().manual_seed(m + 1))[:m].double() * 0.41
    ).requires_grad_()
    fn = lambda a, b: aot_loss(
        a, b, beta=0.3, penalty=penalty, sort=sort, sort_strength=0.5 if sort == "soft" else None
    )
    assert torch.autograd.gradcheck(fn, (u, v), eps=1e-6, atol=1e-7)


def test_hard_sort_gradient_follows_the_matched_partner():
    u = torch.tensor([3.0, 1.0, 2.0], requires_grad=True)
    v = torch.tensor([0.0, 5.0, -1.0])
    aot_loss(u, v, beta=1.0, penalty="least_squares").backward()
    # Matches (1,-1), (2,0), (3,5): d/du (1/3)(1-(u-v))^2 = -(2/3)(1-(u-v))
    expected = torch.tensor([-(2 / 3) * (1 - (3 - 5)), -(2 / 3) * (1 - (1 + 1)), -(2 / 3) * (1 - (2 - 0))])
    assert torch.allclose(u.grad, expected)


def test_reward_accuracy_paired_and_unpaired_against_brute_force():
    assert reward_accuracy(torch.tensor([1.0, 2.0, 0.0]), torch.tensor([0.0, 3.0, 0.0]), paired=True) == 1 / 3
    chosen, rejected = torch.tensor([0.0, 2.0, 2.0, 5.0]), torch.tensor([1.0, 2.0, 3.0])
    brute = sum(float(c > r) for c in chosen for r in rejected) / (len(chosen) * len(rejected))
    assert reward_accuracy(chosen, rejected, paired=False) == pytest.approx(brute)  # ties (2 vs 2) lose


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_unequal_sizes_in_half_precision(dtype):
    """n = 1,000 and m = 1,001 put 2,000 pieces with weights up to 1/1,000 on a grid of
    n * m = 1,001,000: the weighted sum must be accumulated above half precision."""
    g = torch.Generator().manual_seed(7)
    u, v = torch.randn(1000, generator=g), torch.randn(1001, generator=g) + 0.3
    for penalty in ("logistic", "least_squares"):
        want = aot_loss(u.to(dtype).double(), v.to(dtype).double(), beta=1.0, penalty=penalty)
        got = aot_loss(u.to(dtype), v.to(dtype), beta=1.0, penalty=penalty)
        assert got.dtype == dtype and torch.isfinite(got)
        assert got.double().item() == pytest.approx(want.item(), rel=2**-7)  # the output's own rounding


def test_unequal_sizes_hand_worked_on_the_merged_grid():
    """n = 2, m = 3 (docs/objective.md): pieces (0, 1/3], (1/3, 1/2], (1/2, 2/3], (2/3, 1] pair
    (u1, v1), (u1, v2), (u2, v2), (u2, v3) with weights 1/3, 1/6, 1/6, 1/3."""
    from aot.quantiles import quantile_pieces

    iu, iv, lengths, scale = quantile_pieces(2, 3)
    assert iu.tolist() == [0, 0, 1, 1] and iv.tolist() == [0, 1, 1, 2]
    assert lengths.tolist() == [2, 1, 1, 2] and scale == 6
    u, v = torch.tensor([3.0, 1.0]), torch.tensor([0.0, 2.0, 4.0])  # sorted: u = (1, 3), v = (0, 2, 4)
    # least squares at beta = 1: h(z) = (1 - z)^2 on z = 1, -1, 1, -1
    expected = (1 / 3) * 0 + (1 / 6) * 4 + (1 / 6) * 0 + (1 / 3) * 4
    assert aot_loss(u, v, beta=1.0, penalty="least_squares").item() == pytest.approx(expected)
