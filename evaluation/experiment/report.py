"""The experiment's table and plots, from its summary and cached evaluations."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import torch

from evaluation.report import format_mean_std

matplotlib.use("Agg")  # files only, never a window

import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)


def table(summary: dict) -> str:
    ref = summary["reference"]
    head = (
        "| policy | seeds | VADER mean | FSD violation vs ref | win rate vs ref | KL est. | implicit reward acc. | implicit FSD viol. |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|\n"
        f"| reference (SmolLM2) | - | {ref['mean']:.3f} | - | - | 0 | - | - |\n"
    )

    def cell(d):
        return format_mean_std(d["mean"], d["std"], digits=3)

    rows = "".join(
        f"| {m} | {d['mean']['n']} | {cell(d['mean'])} | {cell(d['fsd_violation_vs_reference'])} | {cell(d['win_rate_vs_reference'])} | "
        f"{cell(d['kl'])} | {cell(d['implicit_reward_accuracy'])} | {cell(d['implicit_fsd_violation'])} |\n"
        for m, d in summary["methods"].items()
    )
    return head + rows.rstrip("\n")


def plot_true_quantiles(path: Path, reference: list[float], out: Path, runs: dict) -> None:
    levels = torch.linspace(0.02, 0.98, 49, dtype=torch.float64)
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ax.plot(
        levels, torch.quantile(torch.tensor(reference, dtype=torch.float64), levels), "k--", label="reference"
    )
    methods = sorted({m for m, _ in runs})
    for method in methods:
        scores = [
            x
            for (m, seed) in runs
            if m == method
            for x in json.loads((out / "eval" / f"{m}-s{seed}.json").read_text())["scores"]
        ]
        ax.plot(levels, torch.quantile(torch.tensor(scores, dtype=torch.float64), levels), label=method)
    ax.set_xlabel("quantile level")
    ax.set_ylabel("VADER compound (true reward)")
    ax.set_title("True-reward quantiles on held-out prompts (seeds pooled)")
    _save(fig, ax, path)


def _save(fig, ax, path: Path) -> None:
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_reward_vs_kl(path: Path, summary: dict) -> None:
    fig, ax = plt.subplots(figsize=(5.5, 4.0))
    ax.scatter([0.0], [summary["reference"]["mean"]], c="k", marker="x", label="reference")
    labelled = set()
    for name, r in summary["runs"].items():
        method = name.rsplit("-s", 1)[0]
        color = f"C{list(summary['methods']).index(method)}"
        ax.scatter([r["kl"]], [r["mean"]], c=color, label=None if method in labelled else method)
        labelled.add(method)
    ax.set_xlabel("KL estimate to the reference (nats / sequence)")
    ax.set_ylabel("VADER mean on held-out prompts")
    _save(fig, ax, path)
