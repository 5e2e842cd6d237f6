"""The committed benchmark results render into the README, and say where they were measured."""

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

import readme_tables  # noqa: E402


@pytest.mark.parametrize("name", ["loss", "train", "scale", "memory", "sharded", "generation", "packing"])
def test_results_render_and_record_the_machine(name):
    data = json.loads((BENCH / "results" / f"{name}.json").read_text())
    table = getattr(readme_tables, f"{name}_table")(data)
    assert table.startswith("Machine: ")
    machine = data["smollm2"]["machine"] if name == "scale" else data["machine"]
    assert {"processor", "cores", "torch", "torch_threads", "device"} <= machine.keys()


def test_every_target_is_marked_met_or_not():
    memory = json.loads((BENCH / "results" / "memory.json").read_text())
    train = json.loads((BENCH / "results" / "train.json").read_text())
    targets = list(memory["targets"].values()) + [
        t for m in train["models"].values() for t in m["targets"].values()
    ]
    assert len(targets) == 6 and all(isinstance(t["met"], bool) for t in targets)
    for name in (
        "memory",
        "train",
        "scale",
        "loss",
        "sharded",
        "generation",
        "packing",
    ):  # the docs show the committed results
        readme = readme_tables.document(name).read_text()
        start, end = readme.index(f"<!-- bench:{name} -->\n"), readme.index(f"<!-- /bench:{name} -->")
        data = json.loads((BENCH / "results" / f"{name}.json").read_text())
        assert (
            readme[start:end].split("\n", 1)[1].strip()
            == getattr(readme_tables, f"{name}_table")(data).strip()
        )


def test_packing_ratios_follow_from_the_cases():
    data = json.loads((BENCH / "results" / "packing.json").read_text())
    padded, packed = data["cases"]["padded"], data["cases"]["packed"]
    ratios = data["ratios"]["packed_vs_padded"]
    assert ratios["step_time"] == pytest.approx(packed["seconds"] / padded["seconds"])
    assert ratios["tokens_computed_per_pair"] == pytest.approx(
        packed["tokens_computed_per_pair"] / padded["tokens_computed_per_pair"]
    )
    # packed computes exactly the real tokens; padded computes every row to its longest
    assert packed["tokens_computed_per_pair"] == packed["real_tokens_per_pair"] == padded["real_tokens_per_pair"]
