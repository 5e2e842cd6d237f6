"""The frontier sweep's stages: data, training runs with checkpoints, checkpoint evaluation,
points, and ``frontier.json`` / ``frontier.png`` (settings: ``FrontierSettings``).

Where things are kept, so that a sweep picks up where it stopped, on this machine or another:

- ``<points>/``: the sweep's record, small enough to commit (the full sweep's is
  ``docs/experiment/frontier_sweep/``): the reference completions it trained on
  (``generations.json``), the reference policy's held-out evaluation (``reference.json``) and one
  file per finished run (``runs/<run>.json``: its checkpoints' points). A run whose file exists
  is not trained again; each file names the settings and data it came from and is refused when
  they differ.
- ``<out>/``: everything else, rebuilt when missing: the training files, run directories
  (checkpoints; an interrupted run resumes from its last), each checkpoint's samples
  (``eval/<run>/step-<k>.json``), and the outputs ``frontier.json`` and ``frontier.png``.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm import tqdm

from aot.config import compose
from aot.files import atomic_write, short_hash
from aot.fixtures import ensure_smollm2
from aot.metrics import fsd_violation
from aot.models import load_for_generation
from aot.quantiles import quantile_table
from aot.run import train
from evaluation.experiment.frontier import summarise
from evaluation.experiment.frontier_plot import at_matched_kl, plot_frontier
from evaluation.experiment.pipeline import build_data, vader
from evaluation.experiment.sampling import sample_scored, sequence_logps
from evaluation.experiment.settings import UNPAIRED_METHODS, FrontierSettings, frontier_prompts

log = logging.getLogger("aot")
LEVELS = (0.1, 0.25, 0.5, 0.75, 0.9)


def ot_batch(variant: tuple, s: FrontierSettings) -> int | None:
    """Margins (rows) sorted together: the micro-batch, the whole step, or None (per-pair loss)."""
    return {"micro": s.micro_batch, "step": s.rows_per_step, None: None}[variant[1]]


def run_name(variant: tuple, beta: float, seed: int, s: FrontierSettings) -> str:
    n = ot_batch(variant, s)
    return f"{variant[0]}{'' if n is None else f'-ot{n}'}-b{beta:g}-s{seed}"


def plan(s: FrontierSettings) -> list[tuple]:
    """(variant, beta, seed) in the order they run: a whole seed before the next, so that a
    stopped sweep already holds complete frontiers for its first seeds."""
    return [(v, beta, seed) for seed in s.seeds for beta in s.betas for v in s.variants]


def identity(s: FrontierSettings, data_hash: str, run: dict | None = None) -> str:
    """What a record depends on: the evaluation (and the run's training) settings and the data."""
    keys = {k: v for k, v in asdict(s).items() if k not in ("betas", "seeds", "variants", "matched_kls", "bootstrap",
                                                            "bootstrap_seed", "eval_batch")}  # fmt: skip
    return short_hash(
        json.dumps({"settings": keys, "data": data_hash, "run": run}, sort_keys=True, default=str)
    )


def _read_record(path: Path, expected: str) -> dict | None:
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    if record.get("identity") != expected:
        raise ValueError(
            f"{path} was made with other settings or data (identity {record.get('identity')}, expected {expected}); "
            "move it away to rerun, or restore the settings it names"
        )
    return record


def _write_json(path: Path, value) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(value, indent=1) + "\n"))


# --- stages ------------------------------------------------------------------------------------------------


def prepare_data(out: Path, points: Path, base: str, s: FrontierSettings) -> tuple[dict, str]:
    """The experiment's training files, from the recorded completions when the record has them."""
    recorded, generated = points / "generations.json", out / "data" / "generations.json"
    if recorded.is_file() and not generated.is_file():
        generated.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(recorded, generated)
    data = build_data(out, base, s.data)
    if not recorded.is_file():
        points.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(generated, recorded)
    return data, short_hash(b"".join(data[k].read_bytes() for k in sorted(data)))


def train_run(out: Path, data: dict, variant: tuple, beta: float, seed: int, s: FrontierSettings) -> Path:
    """One LoRA run saving a checkpoint every ``steps / checkpoints`` steps (resumes if stopped)."""
    method, run_dir = variant[0], out / "runs" / run_name(variant, beta, seed, s)
    view = "unpaired_train" if method in UNPAIRED_METHODS else "paired_train"
    two_pass = variant[1] == "step"
    result = train(compose(
        "model=smollm2", f"loss={method}", "data=local", f"data.train_path={data[view]}",
        f"data.test_path={data['paired_test']}", f"output_dir={run_dir}", f"seed={seed}", f"loss.beta={beta}",
        f"train.max_steps={s.steps}", f"train.per_device_train_batch_size={s.micro_batch}",
        f"train.gradient_accumulation_steps={1 if two_pass else s.rows_per_step // s.micro_batch}",
        *([f"loss.ot_batch_size={s.rows_per_step}"] if two_pass else []),
        f"train.learning_rate={s.learning_rate}", "train.warmup_steps=0.1", "train.lr_scheduler_type=cosine",
        f"train.max_length={s.data.max_length}", "train.max_prompt_length=48",
        f"train.save_steps={s.steps // s.checkpoints}", "train.save_total_limit=null", "train.logging_steps=1",
        "train.precompute_ref=true", "data.max_test_samples=8",  # diagnostics the frontier does not read
    ))  # fmt: skip
    if "stopped_at" in result:
        raise SystemExit(f"{run_dir} stopped on request at step {result['stopped_at']}; rerun to resume")
    return run_dir


def sample_policy(
    cache: Path, base: str, adapter: Path | None, ref, s: FrontierSettings, device: str
) -> dict:
    """The held-out samples of one policy, their VADER scores and per-sample KL estimate (cached)."""
    if cache.is_file():
        return json.loads(cache.read_text())
    prompts = [p for p in frontier_prompts(s.heldout_prompts) for _ in range(s.samples_per_prompt)]
    model, tok = load_for_generation(base, adapter)
    samples = sample_scored(model.to(device), tok, prompts, s.max_new_tokens, s.eval_batch, s.sampling_seed)
    ref_model, _ = ref
    log_ratio = (samples.logps - sequence_logps(ref_model, samples, tok.pad_token_id, s.eval_batch)).tolist()
    score = vader()
    value = {
        "texts": samples.texts,
        "rewards": [score(t) for t in samples.texts],
        "log_ratio": log_ratio if adapter is not None else [0.0] * len(prompts),  # the reference: exactly 0
    }
    _write_json(cache, value)
    return value


def per_prompt(values: list[float], samples_per_prompt: int) -> list[float]:
    return torch.tensor(values, dtype=torch.float64).view(-1, samples_per_prompt).mean(1).tolist()


def point(ev: dict, reference: dict, s: FrontierSettings, **where) -> dict:
    """One checkpoint's point: where it is in the sweep, its KL and true-reward numbers."""
    rewards = torch.tensor(ev["rewards"], dtype=torch.float64)
    return {
        **where,
        "kl": sum(ev["log_ratio"]) / len(ev["log_ratio"]),
        "reward": float(rewards.mean()),
        "reward_quantiles": quantile_table(rewards, levels=LEVELS),
        "fsd_violation_vs_reference": fsd_violation(
            rewards, torch.tensor(reference["rewards"], dtype=torch.float64)
        ),
        "kl_per_prompt": per_prompt(ev["log_ratio"], s.samples_per_prompt),
        "reward_per_prompt": per_prompt(ev["rewards"], s.samples_per_prompt),
        "rewards": ev["rewards"],
        "examples": ev["texts"][:2],
    }


def run_sweep(out: Path, points: Path, s: FrontierSettings) -> dict:
    """Every stage that its record does not already hold, then frontier.json and frontier.png."""
    started = time.time()
    out.mkdir(parents=True, exist_ok=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    base = str(ensure_smollm2())
    data, data_hash = prepare_data(out, points, base, s)
    ref = None

    def reference_model():
        nonlocal ref
        if ref is None:
            model, tok = load_for_generation(base)
            ref = (model.to(device), tok)
        return ref

    ref_id = identity(s, data_hash)
    reference = _read_record(points / "reference.json", ref_id)
    if reference is None:
        ev = sample_policy(out / "eval" / "reference.json", base, None, reference_model(), s, device)
        reference = {"identity": ref_id, "rewards": ev["rewards"], "examples": ev["texts"][:2]}
        reference.update(reward=float(torch.tensor(ev["rewards"]).mean()),
                         reward_per_prompt=per_prompt(ev["rewards"], s.samples_per_prompt))  # fmt: skip
        _write_json(points / "reference.json", reference)
    all_points, todo = [], plan(s)
    for n, (variant, beta, seed) in enumerate(todo, 1):
        name = run_name(variant, beta, seed, s)
        run_id = identity(s, data_hash, {"variant": variant, "beta": beta, "seed": seed})
        record = _read_record(points / "runs" / f"{name}.json", run_id)
        if record is None:
            log.info(
                "frontier: run %d/%d %s (%.0f min so far)", n, len(todo), name, (time.time() - started) / 60
            )
            t0 = time.time()
            run_dir = train_run(out, data, variant, beta, seed, s)
            t1 = time.time()
            steps = range(s.steps // s.checkpoints, s.steps + 1, s.steps // s.checkpoints)
            where = dict(method=variant[0], ot_batch=ot_batch(variant, s), beta=beta, seed=seed)
            run_points = [
                point(sample_policy(out / "eval" / name / f"step-{k}.json", base, run_dir / f"checkpoint-{k}",
                                    reference_model(), s, device), reference, s, **where, step=k)
                for k in tqdm(steps, desc=f"evaluate {name}", unit="checkpoint")
            ]  # fmt: skip
            record = {"identity": run_id, "run": name, "train_seconds": round(t1 - t0, 1),
                      "eval_seconds": round(time.time() - t1, 1), "points": run_points}  # fmt: skip
            _write_json(points / "runs" / f"{name}.json", record)
            log.info("frontier: %s done: %s", name, ", ".join(f"step {p['step']}: KL {p['kl']:.2f} reward "
                                                              f"{p['reward']:.3f}" for p in run_points))  # fmt: skip
        all_points += record["points"]
    summary = summarise(all_points, s.matched_kls, s.bootstrap, s.bootstrap_seed)
    frontier = {
        "points": all_points,
        **summary,
        "reference": {k: reference[k] for k in ("reward", "reward_per_prompt", "rewards", "examples")},
        "at_matched_kl": at_matched_kl(all_points, summary, s.matched_kls),
        "settings": asdict(s),
        "invocation_seconds": round(time.time() - started, 1),
    }
    _write_json(out / "frontier.json", frontier)
    plot_frontier(out / "frontier.png", frontier)
    return frontier
