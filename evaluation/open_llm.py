"""Open LLM tasks with lm-eval 0.4.13, 0-shot as in the paper, for a run or a base model.

    make eval-open-llm RUN=outputs/merlinite-aot_unpaired-ultrafeedback
    make eval-open-llm MODEL=merlinite            # the base model: outputs/merlinite-base/ (a row of its own)
    make eval-open-llm RUN=... LEADERBOARD=1      # Open LLM Leaderboard v1 shot counts
    make eval-open-llm RUN=... TINY=1             # tinyBenchmarks, for quick feedback
    make eval-open-llm RUN=... CHAT=1             # prompts in the model's chat template

A LoRA run is evaluated as base + adapter (lm-eval's ``peft=``), a full run from its directory.
Runs of the offline fixtures (tiny, smollm2) default to the bundled local task ``aot_tiny_qa``
(the real tasks download from the hub). Writes lm-eval's results JSON and a one-line summary into
``<run>/eval/open_llm/``, or ``<run>/eval/open_llm-chat/`` with ``CHAT=1``: lm-eval's
``apply_chat_template`` (few-shot examples as turns of the conversation). Applying a chat template
moves scores a lot (Llama-3-8B-Instruct's MMLU fell from 0.674 to 0.407 in one report), so the
paper's plain 0-shot stays the default and the two never share a results column.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from omegaconf import OmegaConf

from aot.config import RECIPES
from aot.fixtures import FIXTURES
from aot.models import model_path

LOCAL_TASKS = Path(__file__).parent / "tasks"
log = logging.getLogger("aot")


@dataclass(frozen=True)
class Task:
    name: str  # lm-eval task
    column: str  # results table column
    metric: str  # lm-eval metric key
    leaderboard_shots: int  # Open LLM Leaderboard v1


OPEN_LLM = (
    Task("arc_challenge", "ARC", "acc_norm,none", 25),
    Task("hellaswag", "HellaSwag", "acc_norm,none", 10),
    Task("mmlu", "MMLU", "acc,none", 5),
    Task("truthfulqa_mc2", "TruthfulQA", "acc,none", 0),
    Task("winogrande", "Winogrande", "acc,none", 5),
    Task("gsm8k", "GSM8K", "exact_match,strict-match", 5),
)
TINY = (
    Task("tinyArc", "ARC", "acc_norm,none", 25),
    Task("tinyHellaswag", "HellaSwag", "acc_norm,none", 10),
    Task("tinyMMLU", "MMLU", "acc_norm,none", 0),
    Task("tinyTruthfulQA", "TruthfulQA", "acc,none", 0),
    Task("tinyWinogrande", "Winogrande", "acc_norm,none", 5),
    Task("tinyGSM8k", "GSM8K", "exact_match,strict-match", 5),
)
# tinyBenchmarks' IRT estimator (the `tinyBenchmarks` package) is only on GitHub. Without it the
# tiny subsets run as <task>_raw: the same data and shots, aggregated by the plain mean, and
# labelled as raw accuracy on the tiny subset (not an estimate of the full benchmark).
TINY_RAW = tuple(
    Task(f"{t.name}_raw", f"{t.column} (tiny subset, raw)", t.metric, t.leaderboard_shots) for t in TINY
)
BUNDLED = (Task("aot_tiny_qa", "TinyQA", "acc,none", 0),)
# Every variant a paper row might mean is run and recorded: ARC Challenge and Easy (acc and
# acc_norm), HellaSwag (acc and acc_norm), GSM8K (strict and flexible match) all land in
# results.json; `make results VARIANT=` picks the one the table shows (evaluation.results.VARIANTS).
EXTRA = (Task("arc_easy", "ARC-Easy", "acc,none", 25),)
ALL_TASKS = {t.name: t for t in OPEN_LLM + TINY + TINY_RAW + BUNDLED + EXTRA}


def tiny_estimator_available() -> bool:
    return importlib.util.find_spec("tinyBenchmarks") is not None


def raw_tiny_tasks(dest: Path) -> Path:
    """lm-eval's tinyBenchmarks task configs as ``<task>_raw``, each IRT aggregation replaced by
    the mean (same data, prompts and shot counts)."""
    import lm_eval.tasks  # optional: the eval extra

    src = Path(lm_eval.tasks.__file__).parent / "tinyBenchmarks"
    dest.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.name in ("agg_functions.py", "tinyBenchmarks.yaml") or f.suffix not in (".yaml", ".py"):
            continue
        text = f.read_text()
        if f.suffix == ".yaml":
            text = re.sub(r"aggregation: !function agg_functions\.\w+", "aggregation: mean", text)
            text = re.sub(r"^task: (\w+)$", r"task: \1_raw", text, flags=re.M)
        (dest / f.name).write_text(text)
    return dest


OFFLINE_FIXTURES = tuple(FIXTURES)  # default to the bundled task: the real ones download


@dataclass
class Target:
    """What to evaluate: lm-eval model_args, where results go, and whether it is the tiny model."""

    model_args: dict
    out_dir: Path
    label: str
    tiny: bool


def resolve_target(
    run: str | None, model: str | None, dtype: str = "auto", outputs: str | Path = "outputs"
) -> Target:
    """A run directory (LoRA adapter on its base, or a full model), or a recipe name / hub id."""
    if bool(run) == bool(model):
        raise ValueError("give exactly one of RUN=<run dir> or MODEL=<recipe or hub id>")
    if run:
        run_dir = Path(run)
        config = run_dir / "config.yaml"
        if not config.is_file():
            raise FileNotFoundError(f"{config}: not a run directory (make train writes config.yaml there)")
        cfg = yaml.safe_load(config.read_text())
        base = cfg["model"]["name_or_path"]
        if (run_dir / "adapter_config.json").is_file():
            args = {"pretrained": base, "peft": str(run_dir)}
        else:
            args = {"pretrained": str(run_dir)}
        return Target(
            {**args, "dtype": dtype},
            run_dir / "eval" / "open_llm",
            run_dir.name,
            cfg["model"]["id"] in OFFLINE_FIXTURES,
        )
    run_dir = base_run_dir(model, outputs)
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    model_id, path = cfg["model"]["id"], cfg["model"]["name_or_path"]
    return Target(
        {"pretrained": path, "dtype": dtype}, run_dir / "eval" / "open_llm", run_dir.name, model_id == "tiny"
    )


def base_run_dir(model: str, outputs: str | Path = "outputs") -> Path:
    """``outputs/<id>-base/`` for a base model (a recipe name, hub id or local directory), with a
    config.yaml like a run's (model id, path, the recipe's fallback chat template, loss "base"),
    so that it gets evaluated and tabled like any run."""
    recipe = RECIPES / "model" / f"{model}.yaml"
    template = None
    if recipe.is_file():
        spec = yaml.safe_load(recipe.read_text())["model"]
        model_id, path, template = model, spec["name_or_path"], spec.get("chat_template")
        if path in FIXTURES:  # the offline fixtures, built or converted on first use
            path = model_path(OmegaConf.create({"model": {"name_or_path": path}}))
    else:  # a hub id or a local directory
        model_id, path = model.rstrip("/").split("/")[-1], model
    run_dir = Path(outputs) / f"{model_id}-base"
    run_dir.mkdir(parents=True, exist_ok=True)
    config = {
        "model": {"id": model_id, "name_or_path": path, "chat_template": template},
        "loss": {"name": "base"},
        "seed": None,
    }
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    return run_dir


def task_plan(
    target: Target, tasks: str | None, leaderboard: bool, tiny: bool, raw_tiny: bool = False
) -> list[tuple[list[str], int]]:
    """Groups of tasks that share a shot count: [(tasks, num_fewshot), ...]. The tiny tasks
    always take their own shot counts (the ones tinyBenchmarks' estimator was fitted with)."""
    if tasks:
        names = [t.strip() for t in tasks.split(",") if t.strip()]
    elif tiny:
        names = [t.name for t in (TINY_RAW if raw_tiny else TINY)]
    elif target.tiny:
        names = [t.name for t in BUNDLED]
    else:
        names = [t.name for t in OPEN_LLM + EXTRA]
    groups: dict[int, list[str]] = {}
    for name in names:
        own = name in ALL_TASKS and ALL_TASKS[name] in TINY + TINY_RAW
        shots = ALL_TASKS[name].leaderboard_shots if (leaderboard or own) and name in ALL_TASKS else 0
        groups.setdefault(shots, []).append(name)
    return [(names, shots) for shots, names in sorted(groups.items())]


def summary_line(results: dict) -> str:
    parts = []
    for task, metrics in results.items():
        key = (
            ALL_TASKS[task].metric
            if task in ALL_TASKS
            else next((k for k in metrics if k.split(",")[0] in ("acc_norm", "acc", "exact_match")), None)
        )
        if key and key in metrics:
            parts.append(f"{task} {key.split(',')[0]}={metrics[key]:.4f}")
    return " | ".join(parts)


def evaluate(
    run: str | None = None,
    model: str | None = None,
    tasks: str | None = None,
    include_path: str | None = None,
    leaderboard: bool = False,
    tiny: bool = False,
    backend: str = "hf",
    batch_size: str = "auto",
    device: str | None = None,
    limit: float | None = None,
    outputs: str | Path = "outputs",
    chat: bool = False,
) -> dict:
    import lm_eval  # optional: the eval extra
    from lm_eval.tasks import TaskManager

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    target = resolve_target(run, model, outputs=outputs)
    if chat:
        target.out_dir = target.out_dir.with_name("open_llm-chat")
    raw_tiny = tiny and not tiny_estimator_available()
    includes = [str(LOCAL_TASKS)] + ([include_path] if include_path else [])
    if raw_tiny:
        log.warning(
            "tinyBenchmarks (its IRT estimator) is not installed, and it is only on GitHub: reporting the "
            "tiny subsets' RAW accuracy (<task>_raw), not an estimate of the full benchmarks"
        )
        includes.append(str(raw_tiny_tasks(target.out_dir / "tiny_raw_tasks")))
    plan = task_plan(target, tasks, leaderboard, tiny, raw_tiny)
    manager = TaskManager(include_path=includes)
    if backend == "vllm":
        target.model_args = {**target.model_args}
        if "peft" in target.model_args:  # vLLM takes a LoRA adapter as lora_local_path
            target.model_args["lora_local_path"] = target.model_args.pop("peft")
    merged: dict = {"results": {}, "configs": {}, "n-shot": {}, "versions": {}}
    for names, shots in plan:
        log.info("lm-eval %s: %s, %d-shot", target.label, ",".join(names), shots)
        out = lm_eval.simple_evaluate(
            model=backend,
            model_args=target.model_args,
            tasks=names,
            num_fewshot=shots,
            batch_size=batch_size,
            device=device,
            task_manager=manager,
            limit=limit,
            log_samples=False,
            apply_chat_template=chat,
            fewshot_as_multiturn=chat and shots > 0,
        )
        for key in merged:
            merged[key].update(out.get(key, {}))
        merged["config"] = out.get("config", {})
    merged["setting"] = (
        ("tiny_raw_accuracy" if raw_tiny else "tiny_irt_estimate")
        if tiny
        else "leaderboard_v1_shots"
        if leaderboard
        else "zero_shot"
    )
    merged["setting"] += "+chat" if chat else ""
    merged["chat_template"] = chat
    merged["model_args"] = target.model_args
    target.out_dir.mkdir(parents=True, exist_ok=True)
    (target.out_dir / "results.json").write_text(json.dumps(merged, indent=2, default=str) + "\n")
    line = summary_line(merged["results"])
    (target.out_dir / "summary.txt").write_text(f"{merged['setting']}: {line}\n")
    print(f"{target.label} ({merged['setting']}): {line}\nwrote {target.out_dir}/results.json")
    return merged
