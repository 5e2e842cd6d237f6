"""Open LLM tasks with lm-eval 0.4.13, 0-shot as in the paper, for a run or a base model.

    make eval-open-llm RUN=outputs/merlinite-aot_unpaired-ultrafeedback
    make eval-open-llm MODEL=merlinite            # the base model: outputs/merlinite-base/ (a row of its own)
    make eval-open-llm RUN=... LEADERBOARD=1      # Open LLM Leaderboard v1 shot counts
    make eval-open-llm RUN=... TINY=1             # tinyBenchmarks, for quick feedback
    make eval-open-llm RUN=... CHAT=1             # prompts in the run's chat template
    make eval-open-llm RUN=... BACKEND=vllm       # lm-eval's vLLM backend, in vLLM's own Python

A LoRA run is evaluated as base + adapter (lm-eval's ``peft=``; vLLM: ``lora_local_path`` with
the smallest ``max_lora_rank`` vLLM accepts), a full run from its directory. Runs of the offline
fixtures (tiny, smollm2) default to the bundled local task ``aot_tiny_qa`` (the real tasks
download from the hub). Every setting has its own folder, ``<run>/eval/open_llm/<setting>/``
(``zero_shot``, ``leaderboard_v1_shots``, ``tiny_irt_estimate`` or ``tiny_raw_accuracy``, then
``+chat``, ``+vllm``, ``+limit<N>`` where they apply), holding lm-eval's results JSON and a
one-line summary; a ``TASKS=`` run adds its tasks to its setting's file, so that no run replaces
another setting's numbers. ``CHAT=1``: lm-eval's ``apply_chat_template`` (few-shot examples as
turns of the conversation) with the run's own tokenizer and chat template (the recipe's fallback
where the model ships none), the one its answers are generated with. Applying a chat template
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

from aot.fixtures import FIXTURES
from evaluation.runs import base_run_dir, run_config, run_tokenizer
from evaluation.vllm_env import adapter_rank, max_lora_rank, run_worker, vllm_python

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
# tiny subsets run as <task>_raw: the same data and shots, aggregated by the plain mean, recorded
# under the setting tiny_raw_accuracy (its columns say "tiny subset, raw": never the full benchmark).
TINY_RAW = tuple(Task(f"{t.name}_raw", t.column, t.metric, t.leaderboard_shots) for t in TINY)
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
    run_dir: Path


def resolve_target(
    run: str | None, model: str | None, dtype: str = "auto", outputs: str | Path = "outputs"
) -> Target:
    """A run directory (LoRA adapter on its base, or a full model), or a recipe name / hub id
    (``outputs/<id>-base/``, ``evaluation.runs.base_run_dir``). ``out_dir`` holds one folder per
    setting."""
    if bool(run) == bool(model):
        raise ValueError("give exactly one of RUN=<run dir> or MODEL=<recipe or hub id>")
    run_dir = Path(run) if run else base_run_dir(model, outputs)
    cfg = run_config(run_dir)
    base = cfg["model"]["name_or_path"]
    if (run_dir / "adapter_config.json").is_file():
        args = {"pretrained": base, "peft": str(run_dir)}
    elif cfg.get("loss", {}).get("name") == "base":
        args = {"pretrained": base}
    else:
        args = {"pretrained": str(run_dir)}
    tiny = cfg["model"]["id"] in (OFFLINE_FIXTURES if run else ("tiny",))
    return Target({**args, "dtype": dtype}, run_dir / "eval" / "open_llm", run_dir.name, tiny, run_dir)


def setting_name(leaderboard: bool, tiny: bool, raw_tiny: bool, chat: bool, backend: str, limit) -> str:
    """The setting a run of lm-eval is recorded under: its folder, and its table columns."""
    name = (
        ("tiny_raw_accuracy" if raw_tiny else "tiny_irt_estimate")
        if tiny
        else "leaderboard_v1_shots"
        if leaderboard
        else "zero_shot"
    )
    extras = (["chat"] if chat else []) + ([backend] if backend != "hf" else [])
    extras += [f"limit{limit:g}"] if limit else []
    return "+".join([name, *extras])


def backend_args(target: Target, backend: str, chat: bool, folder: Path) -> dict:
    """lm-eval's model_args. ``chat``: the run's tokenizer with its template, saved in ``folder``
    (lm-eval would load the base model's from ``pretrained``). vLLM: the adapter as
    ``lora_local_path`` with a ``max_lora_rank`` vLLM accepts (lm-eval's default is 16)."""
    args = dict(target.model_args)
    if chat:
        run_tokenizer(target.run_dir).save_pretrained(folder / "chat_tokenizer")
        args["tokenizer"] = str(folder / "chat_tokenizer")
    if backend == "vllm" and "peft" in args:
        args["lora_local_path"] = args.pop("peft")
        args["max_lora_rank"] = max_lora_rank(adapter_rank(args["lora_local_path"]))
    return args


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
    """lm-eval on the planned tasks; the results, also written to the setting's folder (merged
    with the tasks an earlier run of the same setting recorded there)."""
    target = resolve_target(run, model, outputs=outputs)
    python = vllm_python(("vllm", "lm_eval")) if backend == "vllm" else None  # before anything loads
    raw_tiny = tiny and not tiny_estimator_available()
    setting = setting_name(leaderboard, tiny, raw_tiny, chat, backend, limit)
    folder = target.out_dir / setting
    folder.mkdir(parents=True, exist_ok=True)
    includes = [str(LOCAL_TASKS)] + ([include_path] if include_path else [])
    if raw_tiny:
        log.warning(
            "tinyBenchmarks (its IRT estimator) is not installed, and it is only on GitHub: reporting the "
            "tiny subsets' RAW accuracy (<task>_raw), not an estimate of the full benchmarks"
        )
        includes.append(str(raw_tiny_tasks(folder / "tiny_raw_tasks")))
    plan = task_plan(target, tasks, leaderboard, tiny, raw_tiny)
    model_args = backend_args(target, backend, chat, folder)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    path = folder / "results.json"
    merged = json.loads(path.read_text()) if path.is_file() else {}
    for key in ("results", "configs", "n-shot", "versions"):
        merged.setdefault(key, {})
    for names, shots in plan:
        log.info("lm-eval %s: %s, %d-shot (%s)", target.label, ",".join(names), shots, setting)
        job = dict(model=backend, model_args=model_args, tasks=names, num_fewshot=shots, batch_size=batch_size,
                   device=device, limit=limit, log_samples=False, apply_chat_template=chat,
                   fewshot_as_multiturn=chat and shots > 0)  # fmt: skip
        if python:  # lm-eval's vLLM backend imports vLLM: it runs in vLLM's Python
            job["include_path"] = includes
            out = json.loads(run_worker(python, "evaluation.lm_eval_worker", job, folder / f"job-{shots}.json",
                                        folder / f"out-{shots}.json").read_text())  # fmt: skip
        else:
            import lm_eval  # optional: the eval extra
            from lm_eval.tasks import TaskManager

            out = lm_eval.simple_evaluate(**job, task_manager=TaskManager(include_path=includes))
        for key in ("results", "configs", "n-shot", "versions"):
            merged[key].update(out.get(key, {}))
        merged["config"] = out.get("config", {})
    merged.update(setting=setting, chat_template=chat, backend=backend, limit=limit, model_args=model_args)
    path.write_text(json.dumps(merged, indent=2, default=str) + "\n")
    line = summary_line(merged["results"])
    (folder / "summary.txt").write_text(f"{setting}: {line}\n")
    print(f"{target.label} ({setting}): {line}\nwrote {path}")
    return merged
