"""Distributional diagnostics on an eval split: what AOT did to the reward distributions.

For paired rows: rewards of chosen and rejected answers, and policy vs reference margins. For
unpaired rows: rewards of chosen and rejected answers. Metrics: reward accuracy, margins,
quantiles, FSD violation (share of quantile levels where chosen does not beat rejected) and the
AOT violation (the training objective on the whole split). ``plot_quantiles`` draws them like
the paper's Figure 1.
"""

from __future__ import annotations

import matplotlib
import torch

from aot.losses import aot_loss
from aot.metrics import fsd_violation, reward_accuracy
from aot.quantiles import quantile_table
from aot.scoring import score_rows

matplotlib.use("Agg")  # files only, never a window

import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)


def split_rows(rows: torch.Tensor, features: list[dict]) -> dict[str, torch.Tensor]:
    """Per-row log-probs (N, 2) [chosen, rejected] or (N, 1) split into
    {"chosen": (n,), "rejected": (m,)} (unpaired rows by their labels)."""
    rows = rows.double()
    if rows.shape[1] == 2:
        return {"chosen": rows[:, 0], "rejected": rows[:, 1]}
    labels = torch.tensor([f["label"] for f in features])
    return {"chosen": rows[labels, 0], "rejected": rows[~labels, 0]}


def measure(trainer, features: list[dict], collator, batch_size: int, reference: bool = True) -> dict:
    """Policy (and, if ``reference``, reference) log-probs of a split through the trainer's
    prepared model, rows sharded across ranks: {"policy": ..., "reference": ...} as ``split_rows``."""
    out = {"policy": split_rows(score_rows(trainer, features, collator, batch_size), features)}
    if reference:
        rows = score_rows(trainer, features, collator, batch_size, reference=True)
        out["reference"] = split_rows(rows, features)
    return out


def summarise(policy: dict, reference: dict, paired: bool, beta: float, penalty: str) -> dict:
    """Metrics from policy and reference log-probs of one split (as returned by ``split_rows``)."""
    rc, rr = policy["chosen"] - reference["chosen"], policy["rejected"] - reference["rejected"]
    metrics = {
        "reward_accuracy": reward_accuracy(rc, rr, paired),
        "reward_margin": float(rc.mean() - rr.mean()),
        "chosen_reward_quantiles": quantile_table(rc),
        "rejected_reward_quantiles": quantile_table(rr),
        "fsd_violation": fsd_violation(rc, rr),
        "aot_violation": float(aot_loss(rc, rr, beta=beta, penalty=penalty)),
    }
    if paired:
        pm = policy["chosen"] - policy["rejected"]
        rm = reference["chosen"] - reference["rejected"]
        metrics.update(
            {
                "policy_margin_quantiles": quantile_table(pm),
                "reference_margin_quantiles": quantile_table(rm),
                "margin_fsd_violation": fsd_violation(pm, rm),
            }
        )
    return metrics


def _curve(ax, x: torch.Tensor, **kw) -> None:
    xs = torch.sort(x).values
    ax.plot((torch.arange(len(xs)) + 0.5) / len(xs), xs, **kw)


def plot_quantiles(path, reference: dict, before: dict, after: dict, paired: bool, title: str) -> None:
    """Left: quantiles of chosen vs rejected rewards (after training); right: policy vs reference
    margin quantiles (paired splits only). Dashed: before training."""
    fig, axes = plt.subplots(1, 2 if paired else 1, figsize=(11 if paired else 5.5, 4), squeeze=False)
    ax = axes[0, 0]
    for logps, style, when in ((before, "--", "before"), (after, "-", "after")):
        _curve(
            ax, logps["chosen"] - reference["chosen"], color="tab:green", ls=style, label=f"chosen ({when})"
        )
        _curve(
            ax,
            logps["rejected"] - reference["rejected"],
            color="tab:red",
            ls=style,
            label=f"rejected ({when})",
        )
    ax.set(xlabel="quantile level t", ylabel="reward  logp_policy - logp_ref", title="rewards")
    ax.legend(fontsize=8)
    if paired:
        ax = axes[0, 1]
        _curve(ax, after["chosen"] - after["rejected"], color="tab:blue", label="policy margin (after)")
        _curve(
            ax,
            reference["chosen"] - reference["rejected"],
            color="tab:gray",
            ls="--",
            label="reference margin",
        )
        ax.set(xlabel="quantile level t", ylabel="logp(y+) - logp(y-)", title="margins")
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
