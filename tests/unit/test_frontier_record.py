"""The full sweep's committed frontier.json (docs/experiment/) against its own points."""

import json
from pathlib import Path

import pytest
from conftest import REPO

from evaluation.experiment.frontier import summarise

RECORD = Path(REPO) / "docs" / "experiment" / "frontier.json"


def test_committed_frontier_follows_from_its_points():
    """The full sweep's frontier.json: the sweep the issue asks for, and every frontier, matched
    value, difference and interval recomputed from its points by the same rule and seed."""
    frontier = json.loads(RECORD.read_text())
    points, s = frontier["points"], frontier["settings"]
    variants = {(p["method"], p["ot_batch"]) for p in points}
    assert {m for m, _ in variants} >= {"aot_paired", "aot_unpaired", "dpo"} and len(variants) >= 4
    assert any(m == "aot_paired" and ot >= 32 for m, ot in variants)
    for v in variants:
        mine = [p for p in points if (p["method"], p["ot_batch"]) == v]
        assert len({p["beta"] for p in mine}) >= 3 and len({p["seed"] for p in mine}) >= 2, v
        assert len({p["step"] for p in mine}) >= 4, v
    kls = [p["kl"] for p in points]
    assert min(kls) <= 1 and max(kls) >= 8
    for p in points:
        assert p["kl"] == pytest.approx(sum(p["kl_per_prompt"]) / len(p["kl_per_prompt"]))
        assert p["reward"] == pytest.approx(sum(p["reward_per_prompt"]) / len(p["reward_per_prompt"]))
        assert p["reward"] == pytest.approx(sum(p["rewards"]) / len(p["rewards"]))
    again = summarise(points, s["matched_kls"], s["bootstrap"], s["bootstrap_seed"])
    for key in ("frontiers", "matched", "differences"):
        assert json.dumps(again[key], sort_keys=True) == json.dumps(frontier[key], sort_keys=True), key
    for v in variants - {("dpo", None)}:
        assert len([d for d in frontier["differences"] if (d["method"], d["ot_batch"]) == v]) >= 3, v
