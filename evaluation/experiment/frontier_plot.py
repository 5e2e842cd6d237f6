"""frontier.png: reward against KL with every point and each variant's frontier, and beside it
the true-reward quantile curves of AOT and DPO at one matched KL (``at_matched_kl``)."""

from __future__ import annotations

import statistics

import matplotlib
import torch

from aot.metrics import fsd_violation
from evaluation.experiment.frontier import BASELINE

matplotlib.use("Agg")  # files only, never a window

import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

LEVELS = [round(0.02 * k, 2) for k in range(1, 50)]


def label(method: str, ot_batch) -> str:
    return method if ot_batch is None else f"{method} (OT {ot_batch})"


def _pooled(points: list[dict], method, ot_batch, beta, step) -> torch.Tensor:
    """Every seed's rewards of one config, pooled."""
    return torch.tensor(
        [x for p in points if (p["method"], p["ot_batch"], p["beta"], p["step"]) == (method, ot_batch, beta, step)
         for x in p["rewards"]], dtype=torch.float64,
    )  # fmt: skip


def at_matched_kl(points: list[dict], summary: dict, grid) -> dict | None:
    """AOT's and DPO's true-reward distributions at one KL: the DPO frontier config nearest the
    median KL matched for every AOT variant, and each AOT variant's frontier config nearest to
    that one's KL (each config's seeds pooled), with the FSD violation between them both ways."""
    matched = {}
    for m in summary["matched"]:
        if m["method"] != BASELINE:
            matched.setdefault((m["method"], m["ot_batch"]), set()).add(m["kl"])
    if not matched:
        return None
    common = set.intersection(*matched.values()) or set.union(*matched.values())
    target = statistics.median_low(sorted(common))
    fronts = {(f["method"], f["ot_batch"]): f["points"] for f in summary["frontiers"]}
    base_key = next(k for k in fronts if k[0] == BASELINE)
    base = min(fronts[base_key], key=lambda q: abs(q["kl"] - target))
    chosen = [(base_key, base)] + [
        (k, min(fronts[k], key=lambda q: abs(q["kl"] - base["kl"]))) for k in matched
    ]
    base_rewards = _pooled(points, *base_key, base["beta"], base["step"])
    levels = torch.tensor(LEVELS, dtype=torch.float64)
    policies = []
    for (method, ot), q in chosen:
        rewards = _pooled(points, method, ot, q["beta"], q["step"])
        policies.append({
            "method": method, "ot_batch": ot, "beta": q["beta"], "step": q["step"], "kl": q["kl"], "reward": q["reward"],
            "quantiles": torch.quantile(rewards, levels).tolist(),
            "fsd_violation_vs_dpo": fsd_violation(rewards, base_rewards),
            "dpo_fsd_violation_vs_this": fsd_violation(base_rewards, rewards),
        })  # fmt: skip
    return {"target_kl": target, "levels": LEVELS, "policies": policies}


def plot_frontier(path, frontier: dict) -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6))
    ref = frontier["reference"]["reward"]
    left.scatter([0.0], [ref], c="k", marker="x", s=60, label="reference", zorder=3)
    colours = {}
    for f in frontier["frontiers"]:
        key = (f["method"], f["ot_batch"])
        colours[key] = f"C{len(colours)}"
        pts = [p for p in frontier["points"] if (p["method"], p["ot_batch"]) == key]
        left.scatter([p["kl"] for p in pts], [p["reward"] for p in pts], c=colours[key], alpha=0.35, s=14)
        left.plot([q["kl"] for q in f["points"]], [q["reward"] for q in f["points"]], "-o", c=colours[key],
                  ms=4, label=label(*key))  # fmt: skip
    left.set_xscale("symlog", linthresh=1.0)
    left.set_xlabel("KL estimate to the reference (nats / sequence, symlog)")
    left.set_ylabel("VADER mean on held-out samples")
    left.set_title("Every checkpoint (dots, per seed); frontiers of seed means (lines)", fontsize=9)
    left.legend(fontsize=8)
    panel = frontier.get("at_matched_kl")
    if panel:
        levels = panel["levels"]
        refq = torch.quantile(torch.tensor(frontier["reference"]["rewards"], dtype=torch.float64),
                              torch.tensor(levels, dtype=torch.float64))  # fmt: skip
        right.plot(levels, refq, "k--", label="reference")
        for p in panel["policies"]:
            key = (p["method"], p["ot_batch"])
            extra = "" if p["method"] == BASELINE else (
                f", FSD viol. vs dpo {p['fsd_violation_vs_dpo']:.2f} (dpo vs it {p['dpo_fsd_violation_vs_this']:.2f})"
            )  # fmt: skip
            right.plot(
                levels, p["quantiles"], c=colours.get(key), label=f"{label(*key)}: KL {p['kl']:.1f}{extra}"
            )
        right.set_title(f"True-reward quantiles near KL {panel['target_kl']:g} (seeds pooled)", fontsize=9)
        right.set_xlabel("quantile level")
        right.set_ylabel("VADER compound (true reward)")
        right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
