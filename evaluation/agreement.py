"""When two judges scored the same runs: do they rank the runs alike, and do they agree pair by pair?

The paper replaced GPT-4 by Llama-3-70B as judge because it kept GPT-4's ranking of the models;
these numbers let a user check that on their own runs. For every two judges (their column
labels) that scored the same generation (its variant: decoding, engine, length, instruction set)
of at least one common run:

- ``spearman``: rank correlation of their win rates over the runs both scored (``None`` below 2);
- ``agreement``: the share of instructions, over every run both judged, where their verdicts
  prefer the same answer (from each judging's ``verdicts.json``).
"""

from __future__ import annotations

import itertools
import json
import statistics
from pathlib import Path


def _ranks(values: list[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):  # ties share their mean rank
            ranks[order[k]] = (i + j) / 2
        i = j + 1
    return ranks


def spearman(a: list[float], b: list[float]) -> float | None:
    if len(a) < 2:
        return None
    ra, rb = _ranks(a), _ranks(b)
    if len(set(ra)) == 1 or len(set(rb)) == 1:
        return None  # a judge that scores every run alike ranks nothing
    return statistics.correlation(ra, rb)


def judgings(outputs: Path) -> list[dict]:
    """Every judging under ``outputs``: run, column label, generation variant, win rate, verdicts."""
    found = []
    for result in sorted(outputs.glob("*/eval/alpaca/*/outputs-*/result.json")):
        r = json.loads(result.read_text())
        verdicts = result.parent / "verdicts.json"
        found.append(
            {
                "run": result.parents[4].name,
                "label": r.get("judge_label", r["judge"]),
                "variant": r.get("variant", ""),
                "win_rate": r.get("win_rate"),
                "verdicts": json.loads(verdicts.read_text()) if verdicts.is_file() else {},
            }
        )
    return found


def judge_agreement(outputs: Path) -> list[dict]:
    """One row per two judges (and generation variant) with a run in common; see the module docstring."""
    by_judge: dict[tuple, dict] = {}
    for j in judgings(outputs):
        by_judge.setdefault((j["label"], j["variant"]), {})[j["run"]] = j
    rows = []
    for (a, da), (b, db) in itertools.combinations(sorted(by_judge), 2):
        if da != db:
            continue
        common = sorted(set(by_judge[(a, da)]) & set(by_judge[(b, db)]))
        if not common:
            continue
        scored = [
            r
            for r in common
            if by_judge[(a, da)][r]["win_rate"] is not None and by_judge[(b, db)][r]["win_rate"] is not None
        ]
        same, pairs = 0, 0
        for run in common:
            va, vb = by_judge[(a, da)][run]["verdicts"], by_judge[(b, db)][run]["verdicts"]
            for instruction in set(va) & set(vb):
                pairs += 1
                same += (va[instruction] > 1.5) == (vb[instruction] > 1.5)
        rows.append(
            {
                "judges": (a, b),
                "variant": da,
                "runs": len(scored),
                "spearman": spearman(
                    [by_judge[(a, da)][r]["win_rate"] for r in scored],
                    [by_judge[(b, db)][r]["win_rate"] for r in scored],
                ),
                "pairs": pairs,
                "agreement": same / pairs if pairs else None,
            }
        )
    return rows
