"""The frontier's maths (evaluation/experiment/frontier.py) on hand-worked values."""

import pytest
import torch

from evaluation.experiment.frontier import (
    bootstrap_draws,
    configs,
    interpolate,
    matched_kls,
    pareto,
    resampled,
    summarise,
)


def test_pareto_keeps_the_points_no_other_beats_in_increasing_kl():
    kl = [1.0, 2.0, 2.0, 3.0, 0.5, 3.0, 1.0]
    reward = [0.5, 0.7, 0.6, 0.7, 0.2, 0.9, 0.5]
    # 2 loses to 1 (same KL, lower reward); 3 to 1 (higher KL, same reward); 6 duplicates 0
    assert pareto(kl, reward) == [4, 0, 1, 5]
    assert pareto([1.0], [0.3]) == [0] and pareto([], []) == []
    assert pareto([1.0, 2.0], [0.9, 0.1]) == [0]  # more KL for less reward is never on it


def test_interpolation_is_linear_between_neighbours_and_undefined_outside():
    kls, rewards = [0.5, 1.0, 2.0, 3.0], [0.2, 0.5, 0.7, 0.9]
    assert interpolate(kls, rewards, 1.5) == pytest.approx(0.6)
    assert interpolate(kls, rewards, 2.5) == pytest.approx(0.8)
    assert interpolate(kls, rewards, 0.75) == pytest.approx(0.35)
    assert interpolate(kls, rewards, 0.5) == pytest.approx(0.2)
    assert interpolate(kls, rewards, 3.0) == pytest.approx(0.9)
    assert interpolate(kls, rewards, 0.49) is None and interpolate(kls, rewards, 3.01) is None
    assert interpolate([1.0], [0.5], 1.0) == 0.5 and interpolate([1.0], [0.5], 1.1) is None
    assert interpolate([], [], 1.0) is None


def test_matched_kls_are_the_grid_inside_both_ranges():
    grid = [0.5, 1, 2, 4, 8]
    assert matched_kls(grid, [0.7, 3.0, 9.0], [0.2, 5.0]) == [1, 2, 4]
    assert matched_kls(grid, [1.0, 4.0], [1.0, 4.0]) == [1, 2, 4]  # the ends count
    assert matched_kls(grid, [0.1, 0.9], [1.1, 9.0]) == []  # ranges that do not overlap
    assert matched_kls(grid, [], [1.0, 2.0]) == []


def test_bootstrap_draws_count_each_seed_and_prompt_and_follow_the_seed():
    s, p = bootstrap_draws(seeds=2, prompts=5, resamples=300, seed=3)
    assert s.shape == (300, 2) and p.shape == (300, 5)
    assert torch.all(s.sum(1) == 2) and torch.all(p.sum(1) == 5)
    again = bootstrap_draws(2, 5, 300, 3)
    assert torch.equal(s, again[0]) and torch.equal(p, again[1])
    assert not torch.equal(p, bootstrap_draws(2, 5, 300, 4)[1])


def test_resampled_means_equal_indexing_the_drawn_seeds_and_prompts():
    """Independent oracle: redraw the same indices and average by indexing."""
    values = torch.rand(3, 2, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    s, p = bootstrap_draws(2, 5, 50, seed=11)
    got = resampled(values, s, p)
    g = torch.Generator().manual_seed(11)
    si, pi = torch.randint(2, (50, 2), generator=g), torch.randint(5, (50, 5), generator=g)
    for b in range(50):
        want = values[:, si[b]][:, :, pi[b]].mean((1, 2))
        assert torch.allclose(got[b], want)


def test_bootstrap_of_two_prompts_has_the_hand_worked_distribution():
    """Rewards 0 and 1 on two prompts: a replicate's mean is 0, 0.5 or 1 with odds 1/4, 1/2, 1/4."""
    s, p = bootstrap_draws(1, 2, 4000, seed=0)
    means = resampled(torch.tensor([[[0.0, 1.0]]], dtype=torch.float64), s, p)[:, 0]
    for value, share in ((0.0, 0.25), (0.5, 0.5), (1.0, 0.25)):
        assert (means == value).double().mean().item() == pytest.approx(share, abs=0.03)


def _point(method, ot, step, kl, reward, seed=1, beta=0.1):
    return {"method": method, "ot_batch": ot, "beta": beta, "seed": seed, "step": step,
            "kl_per_prompt": kl, "reward_per_prompt": reward}  # fmt: skip


def test_summary_hand_worked():
    """DPO's frontier (1, .5) -> (3, .7) and AOT's (2, .6) -> (4, .9) overlap on [2, 3]: grid KLs 2
    and 3 are matched. AOT's KL and reward are equal on both prompts, so its values are certain;
    DPO's rewards differ by prompt (.4/.6, then .6/.8), so a replicate draws DPO at KL 2 as .5, .6
    or .7 (both prompts 0, mixed, both 1: odds 1/4, 1/2, 1/4) and the 95% interval is the extremes."""
    points = [
        _point("dpo", None, 1, [1.0, 1.0], [0.4, 0.6]),
        _point("dpo", None, 2, [3.0, 3.0], [0.6, 0.8]),
        _point("aot_paired", 8, 1, [2.0, 2.0], [0.6, 0.6]),
        _point("aot_paired", 8, 2, [4.0, 4.0], [0.9, 0.9]),
    ]
    out = summarise(points, grid=[0.5, 1, 2, 3, 4, 5], resamples=2000, seed=0)
    fronts = {f["method"]: [(q["kl"], q["reward"]) for q in f["points"]] for f in out["frontiers"]}
    assert fronts["dpo"] == [(1.0, pytest.approx(0.5)), (3.0, pytest.approx(0.7))]
    matched = {(m["method"], m["kl"]): m for m in out["matched"]}
    assert sorted(matched) == [("aot_paired", 2), ("aot_paired", 3), ("dpo", 2), ("dpo", 3)]
    expect = {("aot_paired", 2): (0.6, 0.6, 0.6), ("aot_paired", 3): (0.75, 0.75, 0.75),
              ("dpo", 2): (0.6, 0.5, 0.7), ("dpo", 3): (0.7, 0.6, 0.8)}  # fmt: skip
    for key, (value, low, high) in expect.items():
        m = matched[key]
        assert (m["reward"], m["ci_low"], m["ci_high"]) == pytest.approx((value, low, high)), key
        assert m["ci_replicates"] == 2000 and m["ot_batch"] == (8 if key[0] == "aot_paired" else None)
    diffs = {d["kl"]: d for d in out["differences"]}
    assert sorted(diffs) == [2, 3] and all(
        d["baseline"] == "dpo" and d["method"] == "aot_paired" for d in diffs.values()
    )
    assert (diffs[2]["diff"], diffs[2]["ci_low"], diffs[2]["ci_high"]) == pytest.approx((0.0, -0.1, 0.1))
    assert (diffs[3]["diff"], diffs[3]["ci_low"], diffs[3]["ci_high"]) == pytest.approx((0.05, -0.05, 0.15))
    assert out["bootstrap"]["resamples"] == 2000 and out["bootstrap"]["seed"] == 0


def test_summary_averages_seeds_and_refuses_missing_ones():
    points = [
        _point("dpo", None, 1, [1.0], [0.2], seed=1),
        _point("dpo", None, 1, [3.0], [0.4], seed=2),
    ]
    keys, kl, reward = configs(points)
    assert keys == [(("dpo", None), 0.1, 1)] and kl.shape == (1, 2, 1)
    out = summarise(points, grid=[2.0], resamples=10, seed=0)
    assert out["frontiers"][0]["points"][0]["kl"] == pytest.approx(2.0)
    assert out["frontiers"][0]["points"][0]["reward"] == pytest.approx(0.3)
    with pytest.raises(ValueError, match="every config needs all seeds"):
        configs([*points, _point("dpo", None, 2, [1.0], [0.2], seed=1)])
    with pytest.raises(ValueError, match="no dpo points"):
        summarise([_point("aot_paired", 8, 1, [1.0], [0.2])], grid=[1.0], resamples=10, seed=0)
