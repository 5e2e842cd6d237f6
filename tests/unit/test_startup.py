"""The CLI answers without the ML stack and leaves nothing behind: ``scripts/train.py --cfg job``,
an unknown name or key, and a setting that cannot run import none of torch, transformers, peft,
datasets, accelerate or TRL, and write no file into the working directory they run in.

What is imported is read from the real command under ``python -X importtime`` (every module a
process imports, once). Start-up times are measured in ``benchmarks/bench_startup.py``, not here.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

#: the ML stack: importing any of these costs seconds
HEAVY = {"torch", "transformers", "peft", "datasets", "accelerate", "trl"}
SCRIPT = os.path.join(REPO, "scripts", "train.py")


def cli(cwd: Path, *args: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    """``scripts/train.py *args`` run in ``cwd``: the process, and the top-level packages it imported."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", SCRIPT, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )
    imported = {
        line.rsplit("|", 1)[1].strip().split(".")[0]
        for line in proc.stderr.splitlines()
        if line.startswith("import time:") and line.count("|") == 2
    }
    assert {"hydra", "omegaconf", "aot"} <= imported, "the import log was not read"
    return proc, imported - {"imported package"}


def files_in(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


@pytest.fixture
def scratch(tmp_path):
    """An empty working directory."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    return cwd


def test_cfg_job_prints_without_the_ml_stack_and_writes_nothing(scratch):
    proc, imported = cli(scratch, "--cfg", "job", "model=llama3", "loss=dpo")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "name_or_path: meta-llama/Meta-Llama-3-8B-Instruct" in proc.stdout and "name: dpo" in proc.stdout
    assert not imported & HEAVY, sorted(imported & HEAVY)
    assert files_in(scratch) == []


@pytest.mark.parametrize(
    "overrides,expected",
    [
        (["loss.penalty=relu"], "loss.penalty='relu' is unknown; valid: logistic, hinge"),  # our check
        (["loss=dpo", "data.view=unpaired"], "loss=dpo needs paired rows"),  # our check, rows
        (["train.max_stepz=3"], "Key 'max_stepz' is not in struct"),  # Hydra: unknown key
        (["loss=orpo"], "Available options in 'loss'"),  # Hydra: unknown name
    ],
)
def test_a_bad_override_is_answered_without_the_ml_stack_and_writes_nothing(scratch, overrides, expected):
    """A setting that cannot run stops before anything loads; Hydra's job logging (whose default
    opens ``./train.log``) must not leave a file in the working directory either."""
    proc, imported = cli(scratch, *overrides)
    assert proc.returncode != 0
    assert expected in proc.stderr, proc.stderr[-3000:]
    assert not imported & HEAVY, sorted(imported & HEAVY)
    assert files_in(scratch) == []
