"""The GPU check's parts that a CPU can run: benchmarks/gpu_memory.py on a small shape."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.mark.slow
def test_the_gpu_memory_check_runs_its_three_cases_on_a_small_shape(tmp_path, tiny_path):
    """benchmarks/gpu_memory.py (run on a lent GPU by gpu_check.sh) on a small Mistral shape on the
    CPU: the same trainers, LoRA and token rows as on the 7B shape, so a GPU session spends its
    minutes on measuring, not on debugging."""

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
