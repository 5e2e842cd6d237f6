"""benchmarks/gpu_check.sh as the lent GPU machine runs it, on this CPU (SMOKE=1: toy sizes).

The machine runs the checkout uninstalled, with its own image's packages plus the wheels the
check carries. Here the same shape: a new virtual environment with nothing installed (so no
editable install of this project), and on ``PYTHONPATH``, as installed in this venv, the wheels
of benchmarks/gpu_wheels.txt without their requirements (the check installs them with
``--no-deps`` into a folder of their own) and a ``site-packages`` folder with the image's packages
(benchmarks/gpu_machine_packages.txt) and what they require (the image has its own versions'
requirements). The folder's name matters: dill, under datasets' fingerprints, pickles classes by
reference only from a folder of that name. An import the machine cannot satisfy, or a path only
an installed project has, fails here, before a GPU session spends its minutes on it.
"""

import json
import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "benchmarks"


def names(file: Path) -> set[str]:
    """Normalised distribution names of a package list (``name`` or ``name==version`` lines)."""
    lines = [
        ln.split("==")[0].strip()
        for ln in file.read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    return {normal(n) for n in lines}


def normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def with_requirements(wanted: set[str], installed: dict) -> set[str]:
    """``wanted`` and everything their installed versions require (extras left out)."""
    from packaging.requirements import Requirement

    todo, done = list(wanted), set()
    while todo:
        name = todo.pop()
        if name in done or name not in installed:
            continue
        done.add(name)
        for line in installed[name].requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(normal(req.name))
    return done


def link(dist, target: Path) -> None:
    """Links in ``target`` to a distribution's import packages and metadata."""
    target.mkdir(parents=True, exist_ok=True)
    for top in {f.parts[0] for f in dist.files if f.parts[0] not in ("..", "__pycache__")}:
        source = Path(dist.locate_file(top))
        if source.exists() and not (target / top).exists():
            (target / top).symlink_to(source)


def machine_like_paths(root: Path) -> tuple[list[Path], set[str]]:
    """[wheels folder, image site-packages] under ``root``, and the distributions placed."""
    installed = {normal(d.metadata["Name"]): d for d in metadata.distributions() if d.files}
    carried = names(BENCH / "gpu_wheels.txt")
    image = with_requirements(names(BENCH / "gpu_machine_packages.txt"), installed) - carried
    wheels, site = root / "site", root / "image" / "site-packages"
    for name in carried | image:
        if name in installed:
            link(installed[name], wheels if name in carried else site)
    return [wheels, site], (carried | image) & installed.keys()


@pytest.mark.slow
def test_the_gpu_check_runs_as_shipped_in_a_machine_like_environment(tmp_path):
    paths, found = machine_like_paths(tmp_path)
    assert {"torch", "transformers", "trl", "peft", "accelerate", "hydra-core"} <= found
    out = tmp_path / "out"
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", tmp_path / "venv"], check=True)
    bare = tmp_path / "venv" / "bin" / "python"
    assert (
        subprocess.run([bare, "-c", "import torch"], capture_output=True).returncode != 0
    )  # nothing installed
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "VIRTUAL_ENV") and not k.startswith("PYTEST")
    }
    pythonpath = os.pathsep.join(map(str, paths))
    env.update(
        PYTHONPATH=pythonpath, SMOKE="1", SKIP_TINY="1", WHEELS="none", PY=str(bare), OMP_NUM_THREADS="1"
    )
    env["AOT_CACHE_DIR"] = os.environ["AOT_CACHE_DIR"]
    proc = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh", f"OUT={out}"], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=1500,
    )  # fmt: skip
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "ModuleNotFoundError" not in log and "Traceback" not in log, log[-6000:]
    packing = json.loads((out / "packing.json").read_text())
    assert packing["ok"], packing
    for shape in ("mistral7b", "llama3_8b"):
        step = json.loads((out / f"step_{shape}.json").read_text())
        assert set(step["cases"]) == {"padded", "packed", "trl"}, step
        assert all("seconds" in c for c in step["cases"].values()), step["cases"]
        assert step["ratios"]["packed_vs_padded"]["tokens_computed_per_pair"] < 1
    headline = (out / "headline.log").read_text()
    assert "1 passed" in headline and headline.rstrip().endswith("exit 0"), headline[-3000:]
