"""Start-up: how soon the CLI answers, and where ``make train``'s time to its first step goes.

    python benchmarks/bench_startup.py [--rounds 7] [--train-rounds 3] [--repo DIR] [--no-train]

1. The CLI, each a fresh process run in an empty working directory, wall time from spawn to exit:
   an empty interpreter (the floor), ``scripts/train.py --cfg job``, a bad value
   (``loss.penalty=relu``: our check), an unknown key (``train.max_stepz=3``: Hydra's), and
   ``import aot.run`` (the ML stack every training run imports). The cases alternate, the order
   rotating between rounds; minimum and median over rounds.
2. ``make train`` (the tiny default: tiny x aot_unpaired x sample, with ``train.max_steps=1`` and
   an output_dir of its own), from spawn to its first training step, in phases read from the
   timestamps of the run's own log lines: interpreter, config and imports until ``train()``
   begins (from the ``start-up: N s from train() ...`` line), then arguments and data (``data``
   lines), model, tokenizer and trainer (``OT batch``), accelerate's preparation (``distributed``)
   and the diagnostics before training (up to the ``start-up`` line, after which the first step
   runs). One more run under ``PYTHONPROFILEIMPORTTIME=1`` attributes import time to packages
   (the self time of each module, summed by top-level package). ``make install`` runs first, so
   that no measured run re-installs.

``--repo`` times the CLI of another checkout (e.g. an older commit) with this interpreter.
Writes benchmarks/results/startup.json; docs/training.md quotes it.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import REPO, alternate, machine, write  # noqa: E402

#: case -> (arguments after the interpreter, whether it should succeed)
CLI = {
    "python -c pass": (["-c", "pass"], True),
    "--cfg job": (["{script}", "--cfg", "job"], True),
    "bad value (loss.penalty=relu)": (["{script}", "loss.penalty=relu"], False),
    "unknown key (train.max_stepz=3)": (["{script}", "train.max_stepz=3"], False),
    "import aot.run": (["-c", "import aot.run"], True),
}
#: phase -> the log line that ends it (after the one before)
PHASES = {
    "arguments, output_dir and data": "data ",
    "model, tokenizer and trainer": "OT batch:",
    "accelerate's preparation": "distributed:",
    "diagnostics before training": "start-up:",
}
STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]\[aot\]\[\w+\] - (.*)$")


def time_cli(repo: Path, args: list[str], ok: bool) -> float:
    env = {**os.environ, "PYTHONPATH": str(repo)}
    args = [a.format(script=repo / "scripts" / "train.py") for a in args]
    with tempfile.TemporaryDirectory() as cwd:
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - start
    if (proc.returncode == 0) != ok:
        sys.exit(f"{args} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return round(wall, 3)


def make_train(out: Path, env: dict | None = None) -> tuple[dict, str]:
    """One ``make train`` to its first step: seconds per phase, and its stderr."""
    args = f"train.max_steps=1 output_dir={out}"
    spawned = time.time()
    proc = subprocess.run(
        ["make", "-s", "train", f"ARGS={args}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )
    if proc.returncode != 0:
        sys.exit(f"make train failed:\n{proc.stderr[-3000:]}")
    lines = []
    for line in (proc.stdout + "\n" + proc.stderr).splitlines():
        match = STAMP.match(line.strip())
        if match:
            stamp = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            lines.append((stamp, match.group(2)))
    lines.sort()
    first_step, message = next((t, m) for t, m in lines if m.startswith("start-up:"))
    began = first_step - float(re.search(r"start-up: ([\d.]+) s", message).group(1))
    phases, last = {"interpreter, config, imports (to train())": began - spawned}, began
    for phase, prefix in PHASES.items():
        ends = [t for t, m in lines if m.startswith(prefix) and t <= first_step]
        phases[phase] = max(ends) - last
        last = max(ends)
    phases["to the first training step"] = first_step - spawned
    return {k: round(v, 2) for k, v in phases.items()}, proc.stderr


def import_seconds(importtime_log: str, top: int = 10) -> dict:
    """Self import time summed by top-level package, largest first."""
    seconds = Counter()
    for line in importtime_log.splitlines():
        parts = line.split("|")
        if line.startswith("import time:") and len(parts) == 3 and parts[0].split(":")[1].strip().isdigit():
            seconds[parts[2].strip().split(".")[0]] += int(parts[0].split(":")[1]) / 1e6
    total = sum(seconds.values())
    return {"all imports": round(total, 2), **{k: round(v, 2) for k, v in seconds.most_common(top)}}


def summary(values: list[float]) -> dict:
    return {"min": min(values), "median": statistics.median(values), "runs": values}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--train-rounds", type=int, default=3)
    parser.add_argument("--repo", type=Path, default=REPO, help="the checkout whose CLI is timed")
    parser.add_argument("--no-train", action="store_true", help="the CLI only")
    parser.add_argument("--out", help="results file (default benchmarks/results/startup.json)")
    opts = parser.parse_args()
    runs = alternate(CLI, opts.rounds, lambda case: time_cli(opts.repo.resolve(), *case))
    result = {
        "machine": {**machine(), "load_average_at_start": os.getloadavg()},
        "repo": str(opts.repo),
        "cli_seconds": {name: summary(values) for name, values in runs.items()},
    }
    if not opts.no_train:
        # make train depends on install, which re-runs pip whenever pyproject.toml or the Makefile
        # changed: done here first, so that no measured run includes it.
        subprocess.run(["make", "-s", "install"], cwd=REPO, check=True)
        with tempfile.TemporaryDirectory() as tmp:
            train_runs = [make_train(Path(tmp) / f"run{r}")[0] for r in range(opts.train_rounds)]
            for r in train_runs:
                print("make train", r, flush=True)
            _, log = make_train(Path(tmp) / "importtime", {"PYTHONPROFILEIMPORTTIME": "1"})
        result["make_train_seconds"] = {
            phase: summary([r[phase] for r in train_runs]) for phase in train_runs[0]
        }
        result["make_train_import_seconds"] = import_seconds(log)
    write("startup.json", result, opts.out)


if __name__ == "__main__":
    main()
