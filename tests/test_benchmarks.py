"""The committed benchmark results render into the README, and say where they were measured."""

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import readme_tables  # noqa: E402


@pytest.mark.parametrize("name", ["loss", "train", "scale", "memory", "sharded"])
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
    for name in ("memory", "train", "scale", "loss", "sharded"):  # the docs show the committed results
        readme = readme_tables.document(name).read_text()
        start, end = readme.index(f"<!-- bench:{name} -->\n"), readme.index(f"<!-- /bench:{name} -->")
        data = json.loads((BENCH / "results" / f"{name}.json").read_text())
        assert (
            readme[start:end].split("\n", 1)[1].strip()
            == getattr(readme_tables, f"{name}_table")(data).strip()
        )


@pytest.mark.slow
def test_the_gpu_memory_check_runs_its_three_cases_on_a_small_shape(tmp_path, tiny_path):
    """benchmarks/gpu_memory.py (run on a lent GPU by gpu_check.sh) on a small Mistral shape on the
    CPU: the same trainers, LoRA and token rows as on the 7B shape, so a GPU session spends its
    minutes on measuring, not on debugging."""
    import subprocess

    out = tmp_path / "memory.json"
    cmd = [sys.executable, str(BENCH / "gpu_memory.py"), "--shape", "tiny", "--length", "64", "--pairs", "2"]
    proc = subprocess.run(
        [*cmd, "--search-limit", "4", "--out", str(out)], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert set(result["steps"]) == {"chunked", "full_logits", "trl"}
    assert all("seconds" in step for step in result["steps"].values()), result["steps"]
    assert result["largest_pairs"] == {"chunked": 4, "full_logits": 4}  # the limit: a CPU does not run out
