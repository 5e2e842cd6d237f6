"""Reward against KL: each method variant's frontier, and comparisons at matched KL with
bootstrap confidence intervals. Numbers in, numbers out (no model, no files).

A *point* is one checkpoint of one run: its ``kl`` (nats per sequence) and ``reward`` (mean true
reward), and the same two per held-out prompt (``kl_per_prompt``, ``reward_per_prompt``), so
that both can be resampled. A *config* is a (variant, beta, step) averaged over its seeds.

1. ``pareto``: the configs no other config of the variant beats (lower-or-equal KL and
   higher-or-equal reward, one strictly), in increasing KL: the variant's frontier;
2. ``interpolate``: the frontier's reward at a KL, linear between its neighbouring points, and
   undefined outside its KL range (no extrapolation);
3. ``matched_kls``: the grid KLs inside the ranges of both frontiers compared;
4. ``bootstrap_draws`` / ``resampled``: one replicate draws held-out prompts and seeds with
   replacement, the same draw for every policy (their samples share prompts and sampling
   seeds, so differences are paired), and recomputes every config's KL and reward, every
   frontier and every matched value from it. CIs are the 2.5% and 97.5% percentiles of the
   replicates in which the frontiers reach that KL (``ci_replicates`` counts them).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

BASELINE = "dpo"


def pareto(kl: Sequence[float], reward: Sequence[float]) -> list[int]:
    """Indices of the points that no other point beats, in increasing KL (of exact duplicates,
    the first): point j beats i when kl[j] <= kl[i] and reward[j] >= reward[i], one strictly."""
    keep = []
    for i in range(len(kl)):
        beaten = any(
            kl[j] <= kl[i] and reward[j] >= reward[i] and (kl[j] < kl[i] or reward[j] > reward[i])
            for j in range(len(kl))
        )
        duplicate = any(kl[j] == kl[i] and reward[j] == reward[i] for j in range(i))
        if not beaten and not duplicate:
            keep.append(i)
    return sorted(keep, key=lambda i: kl[i])


def interpolate(kls: Sequence[float], rewards: Sequence[float], at: float) -> float | None:
    """The frontier (``kls`` increasing) at KL ``at``: linear between neighbours; None outside."""
    if not kls or at < kls[0] or at > kls[-1]:
        return None
    for k in range(len(kls) - 1):
        lo, hi = kls[k], kls[k + 1]
        if lo <= at <= hi:
            return rewards[k] + (rewards[k + 1] - rewards[k]) * (at - lo) / (hi - lo)
    return rewards[-1]  # a frontier of one point, at exactly its KL


def matched_kls(grid: Sequence[float], a: Sequence[float], b: Sequence[float]) -> list[float]:
    """The grid values inside both frontiers' KL ranges (``a``, ``b``: their KLs, increasing)."""
    if not a or not b:
        return []
    lo, hi = max(a[0], b[0]), min(a[-1], b[-1])
    return [k for k in grid if lo <= k <= hi]


# --- configs and their resampling ------------------------------------------------------------------------


def variant_of(point: dict) -> tuple:
    return point["method"], point["ot_batch"]


def configs(points: list[dict]) -> tuple[list[tuple], torch.Tensor, torch.Tensor]:
    """The (variant, beta, step) configs in first-seen order and their per-seed, per-prompt KL and
    reward, (C, S, P) each; every config must hold the same seeds and number of prompts."""
    table: dict[tuple, dict] = {}
    for p in points:
        table.setdefault((variant_of(p), p["beta"], p["step"]), {})[p["seed"]] = p
    keys = list(table)
    seeds = sorted(table[keys[0]]) if keys else []
    for key in keys:
        if sorted(table[key]) != seeds:
            raise ValueError(
                f"config {key} has seeds {sorted(table[key])}, others {seeds}: every config needs all seeds"
            )

    def stack(name):
        rows = [[table[k][s][name] for s in seeds] for k in keys]
        widths = {len(r) for row in rows for r in row}
        if len(widths) > 1:
            raise ValueError(f"{name}: points hold different numbers of prompts {sorted(widths)}")
        return torch.tensor(rows, dtype=torch.float64)

    return keys, stack("kl_per_prompt"), stack("reward_per_prompt")


def bootstrap_draws(seeds: int, prompts: int, resamples: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """How often each seed (B, S) and each prompt (B, P) is drawn in each of B replicates."""
    g = torch.Generator().manual_seed(seed)
    s = torch.randint(seeds, (resamples, seeds), generator=g)
    p = torch.randint(prompts, (resamples, prompts), generator=g)
    count = lambda d, n: torch.zeros(resamples, n, dtype=torch.float64).scatter_add_(  # noqa: E731
        1, d, torch.ones_like(d, dtype=torch.float64)
    )
    return count(s, seeds), count(p, prompts)


def resampled(values: torch.Tensor, seed_counts: torch.Tensor, prompt_counts: torch.Tensor) -> torch.Tensor:
    """Each config's mean over the drawn seeds and prompts: values (C, S, P) -> (B, C)."""
    total = seed_counts.sum(1, keepdim=True) * prompt_counts.sum(1, keepdim=True)  # S * P
    return torch.einsum("bs,bp,csp->bc", seed_counts, prompt_counts, values) / total


# --- the summary -------------------------------------------------------------------------------------------


def frontiers_of(keys: list[tuple], kl: Sequence[float], reward: Sequence[float]) -> dict[tuple, list[int]]:
    """Each variant's frontier as config indices, in increasing KL."""
    by_variant: dict[tuple, list[int]] = {}
    for i, (variant, _, _) in enumerate(keys):
        by_variant.setdefault(variant, []).append(i)
    out = {}
    for variant, idx in by_variant.items():
        front = pareto([kl[i] for i in idx], [reward[i] for i in idx])
        out[variant] = [idx[j] for j in front]
    return out


def _value(front: list[int], kl, reward, at: float) -> float | None:
    return interpolate([float(kl[i]) for i in front], [float(reward[i]) for i in front], at)


def _interval(values: list[float]) -> tuple[float, float]:
    q = torch.quantile(
        torch.tensor(values, dtype=torch.float64), torch.tensor([0.025, 0.975], dtype=torch.float64)
    )
    return float(q[0]), float(q[1])


def summarise(points: list[dict], grid: Sequence[float], resamples: int, seed: int) -> dict:
    """``frontiers``, ``matched`` and ``differences`` (against ``BASELINE``) from the points."""
    keys, kl, reward = configs(points)
    n_seeds, n_prompts = kl.shape[1], kl.shape[2]
    ones_s, ones_p = (
        torch.ones(1, n_seeds, dtype=torch.float64),
        torch.ones(1, n_prompts, dtype=torch.float64),
    )
    est_kl, est_reward = resampled(kl, ones_s, ones_p)[0], resampled(reward, ones_s, ones_p)[0]
    fronts = frontiers_of(keys, est_kl.tolist(), est_reward.tolist())
    base = next((v for v in fronts if v[0] == BASELINE), None)
    if base is None:
        raise ValueError(f"no {BASELINE} points: the matched comparison needs the baseline")
    kls_of = lambda v: [float(est_kl[i]) for i in fronts[v]]  # noqa: E731
    at = {v: matched_kls(grid, kls_of(v), kls_of(base)) for v in fronts if v != base}
    at[base] = sorted({k for ks in at.values() for k in ks})

    seed_counts, prompt_counts = bootstrap_draws(n_seeds, n_prompts, resamples, seed)
    boot_kl, boot_reward = (
        resampled(kl, seed_counts, prompt_counts),
        resampled(reward, seed_counts, prompt_counts),
    )
    samples = {(v, k): [] for v in at for k in at[v]}
    diffs = {(v, k): [] for v in at if v != base for k in at[v]}
    for b in range(resamples):
        bkl, brw = boot_kl[b].tolist(), boot_reward[b].tolist()
        bfronts = frontiers_of(keys, bkl, brw)
        values = {(v, k): _value(bfronts[v], bkl, brw, k) for v, k in samples}
        for key, value in values.items():
            if value is not None:
                samples[key].append(value)
        for v, k in diffs:
            if values[(v, k)] is not None and values[(base, k)] is not None:
                diffs[(v, k)].append(values[(v, k)] - values[(base, k)])

    def entry(v, k, value, reps):
        low, high = _interval(reps) if reps else (None, None)
        return {
            "kl": k,
            "method": v[0],
            "ot_batch": v[1],
            "ci_low": low,
            "ci_high": high,
            "ci_replicates": len(reps),
            **value,
        }

    matched = [
        entry(v, k, {"reward": _value(fronts[v], est_kl, est_reward, k)}, samples[(v, k)])
        for v in at
        for k in at[v]
    ]
    differences = [
        entry(v, k, {"baseline": BASELINE, "diff": _value(fronts[v], est_kl, est_reward, k)
                     - _value(fronts[base], est_kl, est_reward, k)}, diffs[(v, k)])
        for v in at if v != base for k in at[v]
    ]  # fmt: skip
    frontiers = [
        {"method": v[0], "ot_batch": v[1], "points": [
            {"beta": keys[i][1], "step": keys[i][2], "kl": float(est_kl[i]), "reward": float(est_reward[i])} for i in front
        ]}
        for v, front in fronts.items()
    ]  # fmt: skip
    return {
        "frontiers": frontiers,
        "matched": matched,
        "differences": differences,
        "bootstrap": {
            "resamples": resamples,
            "seed": seed,
            "over": "held-out prompts and seeds (one draw for all policies)",
        },
    }
