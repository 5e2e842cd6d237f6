"""`make frontier QUICK=1` end to end on SmolLM2 at toy size: frontier.json with the issue's names,
every matched value and difference recomputed from its points, frontier.png, and a rerun that
picks up from the record (refusing a record made with other settings)."""

import json
import os
import subprocess

import pytest
from conftest import REPO

from evaluation.experiment.frontier import summarise

pytestmark = pytest.mark.slow

POINT_KEYS = {"method", "ot_batch", "beta", "seed", "step", "kl", "reward", "reward_quantiles",
              "fsd_violation_vs_reference"}  # fmt: skip


def _frontier(out, check=True):
    cmd = ["make", "frontier", "QUICK=1", f"OUT={out}"]
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=1800)
    if check:
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def test_frontier_quick_end_to_end(tmp_path, smollm2):
    out = tmp_path / "frontier"
    _frontier(out)
    frontier = json.loads((out / "frontier.json").read_text())
    assert (out / "frontier.png").stat().st_size > 10_000
    s = frontier["settings"]
    runs = len(s["variants"]) * len(s["betas"]) * len(s["seeds"])
    assert len(frontier["points"]) == runs * s["checkpoints"]
    for p in frontier["points"]:
        assert POINT_KEYS <= set(p), p.keys()
        assert (p["ot_batch"] is None) == (p["method"] == "dpo")
        assert -1 <= p["reward"] <= 1 and 0 <= p["fsd_violation_vs_reference"] <= 1
    assert {(p["method"], p["ot_batch"]) for p in frontier["points"]} == {
        ("aot_paired", s["micro_batch"]), ("aot_paired", s["rows_per_step"]),
        ("aot_unpaired", s["micro_batch"]), ("dpo", None),
    }  # fmt: skip
    # The first checkpoint is the warm-up step (learning rate 0): still the reference, KL ~ 0.
    assert all(abs(p["kl"]) < 1e-3 for p in frontier["points"] if p["step"] == 1)
    again = summarise(frontier["points"], s["matched_kls"], s["bootstrap"], s["bootstrap_seed"])
    for key in ("frontiers", "matched", "differences"):
        assert json.dumps(again[key], sort_keys=True) == json.dumps(frontier[key], sort_keys=True), key
    for m in frontier["matched"]:
        assert {"kl", "method", "ot_batch", "reward", "ci_low", "ci_high"} <= set(m)
    for d in frontier["differences"]:
        assert {"kl", "method", "ot_batch", "baseline", "diff", "ci_low", "ci_high"} <= set(d)

    # A rerun trains nothing: every run's record is read back.
    proc = _frontier(out)
    assert "frontier: run" not in proc.stdout + proc.stderr
    assert json.loads((out / "frontier.json").read_text())["points"] == frontier["points"]
    # A record made under other settings is refused, by name.
    record = next((out / "points" / "runs").glob("dpo-*.json"))
    record.write_text(json.dumps({**json.loads(record.read_text()), "identity": "other"}))
    proc = _frontier(out, check=False)
    assert proc.returncode != 0 and record.name in proc.stderr and "other settings or data" in proc.stderr
