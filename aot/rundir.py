"""What a run directory holds, decided before anything is loaded: a new run, this config's run to
resume, this config's finished run, or another config's run (refused, naming what differs).

A directory belongs to one config: ``run.json`` records its flat keys and their hash
(``aot.config.run_identity``). Called on global rank 0 only (``aot.run``): other nodes may not
see its disk.
"""

from __future__ import annotations

import json
from pathlib import Path

from aot.config import ConfigError


def check_run_dir(out: Path, identity: dict, resume: str) -> str:
    """What ``out`` holds for this config: "new", "resume" (checkpoints of this config) or
    "finished" (its final model and metrics). A directory written by another config stops the
    run with the keys that differ; it is never resumed."""
    recorded = out / "run.json"
    checkpoints = any(out.glob("checkpoint-*/trainer_state.json"))
    if recorded.is_file() and resume != "never":
        old = json.loads(recorded.read_text())
        if old["config_hash"] != identity["config_hash"]:
            a, b = old["config"], identity["config"]
            diff = [
                f"{k}: {a.get(k, '<unset>')!r} -> {b.get(k, '<unset>')!r}"
                for k in sorted(a.keys() | b.keys())
                if a.get(k) != b.get(k)
            ]
            raise ConfigError(
                f"{out} holds a run of another config ({'; '.join(diff)}); it will not be resumed or "
                "overwritten. Use another output_dir (the default one carries a hash of your overrides), "
                "or train.resume=never to start this config afresh there."
            )
        if (out / "metrics.json").is_file():
            return "finished"
    elif checkpoints and resume == "auto":
        raise ConfigError(
            f"{out} has checkpoints but no run.json saying which config wrote them; it will not be "
            "resumed. Use another output_dir, or train.resume=never (or a checkpoint path) to decide."
        )
    return "resume" if checkpoints else "new"
