"""The comparison table: every evaluated run under ``outputs/`` in the paper's Table 1 layout.

    make results            # writes results/table.md and results/table.csv

One row per run configuration, columns AlpacaEval (one per judge model and generation) and the
Open LLM tasks (one per setting: the paper's 0-shot unmarked, others marked, e.g. "ARC (chat)").
A row's identity is the run's whole resolved config except ``seed``, ``output_dir`` and
``train.resume``: runs that differ in nothing else are merged into mean +- std over seeds (the
paper's Table 10); runs that differ in anything (learning rate, batch size, LoRA rank, steps,
sort strength, data size, ...) are separate rows, and the "Settings" column names the keys in which
rows of the same model, method and data differ. Base models evaluated with
``make eval-open-llm MODEL=...`` get a row of their own (method "base").
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import yaml

from aot.config import IDENTITY_IGNORED, flatten
from evaluation.open_llm import ALL_TASKS, OPEN_LLM
from evaluation.report import format_mean_std, mean_std

#: What does not tell runs apart in the table: the keys that do not change a run, and the seed
#: (runs differing in nothing else are merged into mean ± std over seeds).
NOT_IDENTITY = ("seed", *IDENTITY_IGNORED)
TASK_COLUMNS = [t.column for t in OPEN_LLM]
#: Which task and metric each Open LLM column shows; every variant is in each run's results.json.
#: "leaderboard" is the Open LLM Leaderboard's (ARC-Challenge and HellaSwag acc_norm, GSM8K strict
#: match). The paper names neither its ARC set nor its metrics, and its base rows (Llama-3-8B-Instruct
#: ARC 81.6, HellaSwag 57.7; Mistral-7B-Instruct-v0.2 81.3, 66.0) sit nearer ARC-Easy accuracy and
#: unnormalised HellaSwag accuracy: "easy_acc" shows those, to match a GPU run against them.
VARIANTS = {
    "leaderboard": {
        "ARC": ("arc_challenge", "acc_norm,none"),
        "HellaSwag": ("hellaswag", "acc_norm,none"),
        "GSM8K": ("gsm8k", "exact_match,strict-match"),
    },
    "easy_acc": {
        "ARC": ("arc_easy", "acc,none"),
        "HellaSwag": ("hellaswag", "acc,none"),
        "GSM8K": ("gsm8k", "exact_match,flexible-extract"),
    },
}


def _run_scores(run_dir: Path, variant: str = "leaderboard") -> tuple[dict, dict[str, float], str | None]:
    """(identity, {column: value in percent}, Open LLM setting) of one run directory."""
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    config = {k: v for k, v in flatten(cfg).items() if k not in NOT_IDENTITY}
    identity = {
        "model": cfg["model"]["id"],
        "method": cfg.get("loss", {}).get("name", "?"),
        "data": (cfg.get("data") or {}).get("name", "-"),
        "config": config,
    }
    scores, settings = {}, []
    for open_llm in sorted((run_dir / "eval" / "open_llm").glob("*/results.json")):
        results = json.loads(open_llm.read_text())
        scores.update(_open_llm_scores(results, variant))
        settings.append(results.get("setting", open_llm.parent.name))
    for result in sorted((run_dir / "eval" / "alpaca").glob("*/outputs-*/result.json")):
        r = json.loads(result.read_text())
        label = ", ".join(filter(None, [r.get("judge_label", r["judge"]), r.get("variant")]))
        if r.get("win_rate") is not None:
            scores[f"AlpacaEval ({label})"] = float(r["win_rate"])
        if r.get("lc_win_rate") is not None:
            scores[f"AlpacaEval LC ({label})"] = float(r["lc_win_rate"])
    setting = "/".join(settings) or None
    return identity, scores, setting


def collect(outputs: Path, variant: str = "leaderboard") -> list[dict]:
    """Rows, seeds merged: {identity..., seeds, n, columns: {name: (mean, std or None)}}."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; valid: {', '.join(VARIANTS)}")
    groups: dict[str, dict] = {}
    for config in sorted(outputs.glob("*/config.yaml")):
        run_dir = config.parent
        if not (run_dir / "eval").is_dir():
            continue
        identity, scores, setting = _run_scores(run_dir, variant)
        if not scores:
            continue
        seed = yaml.safe_load(config.read_text()).get("seed")
        key = json.dumps(identity, sort_keys=True)
        group = groups.setdefault(key, {**identity, "seeds": [], "scores": [], "settings": set(), "runs": []})
        group["seeds"].append(seed)
        group["scores"].append(scores)
        group["runs"].append(run_dir.name)
        if setting:
            group["settings"].add(setting)
    rows = []
    for group in groups.values():
        columns = {}
        for name in sorted({c for s in group["scores"] for c in s}):
            values = [s[name] for s in group["scores"] if name in s]
            columns[name] = mean_std(values)
        rows.append({**group, "n": len(group["scores"]), "columns": columns})
    # Name what sets apart rows of the same model, method and data.
    for row in rows:
        peers = [
            r
            for r in rows
            if (r["model"], r["method"], r["data"]) == (row["model"], row["method"], row["data"])
        ]
        keys = sorted(
            {
                k
                for r in peers
                for k in r["config"]
                if len({json.dumps(p["config"].get(k)) for p in peers}) > 1
            }
        )
        row["options"] = {k: row["config"].get(k) for k in keys}
    return sorted(
        rows,
        key=lambda r: (r["model"], r["method"] != "base", r["method"], json.dumps(r["options"], default=str)),
    )


VARIANT_TASKS = {task for columns in VARIANTS.values() for task, _ in columns.values()}
#: how a setting's columns are marked (zero_shot, the paper's, is unmarked)
SETTING_LABELS = {
    "zero_shot": None,
    "leaderboard_v1_shots": "leaderboard shots",
    "tiny_irt_estimate": "tiny, IRT estimate",
    "tiny_raw_accuracy": "tiny subset, raw",
}


def setting_label(setting: str) -> str:
    """``"tiny subset, raw, chat"`` for ``tiny_raw_accuracy+chat``; ``""`` for ``zero_shot``."""
    name, *extras = setting.split("+")
    return ", ".join(filter(None, [SETTING_LABELS.get(name, name), *extras]))


def _open_llm_scores(results: dict, variant: str) -> dict[str, float]:
    """{column: percent} of one lm-eval results file; columns of any setting but the paper's plain
    0-shot are marked with it ("ARC (leaderboard shots)", "ARC (chat)", ...)."""
    scores = {}
    chosen = VARIANTS[variant]
    for column, (task, metric) in chosen.items():
        if metric in results["results"].get(task, {}):
            scores[column] = 100 * float(results["results"][task][metric])
    for task, metrics in results["results"].items():
        spec = ALL_TASKS.get(task)
        # a column the variant fills from its chosen task (ARC: arc_challenge or arc_easy) is not
        # filled again by the other; the tiny tasks fill it in their own setting's column
        if spec and spec.metric in metrics and (spec.column not in chosen or task not in VARIANT_TASKS):
            scores[spec.column] = 100 * float(metrics[spec.metric])
    label = setting_label(results.get("setting", "zero_shot"))
    return {f"{c} ({label})": v for c, v in scores.items()} if label else scores


def _fmt(cell) -> str:
    return "-" if cell is None else format_mean_std(*cell)


def write_table(
    rows: list[dict], out: Path, variant: str = "leaderboard", agreement: list[dict] | None = None
) -> tuple[Path, Path]:
    alpaca = sorted({c for r in rows for c in r["columns"] if c.startswith("AlpacaEval")})
    extra = sorted({c for r in rows for c in r["columns"]} - set(alpaca) - set(TASK_COLUMNS))
    columns = alpaca + TASK_COLUMNS + extra
    out.mkdir(parents=True, exist_ok=True)
    header = ["Model", "Method", "Settings", "Data", "Seeds"] + columns
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    with (out / "table.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["model", "method", "options", "data", "seeds", "runs", "open_llm_setting"]
            + [x for c in columns for x in (c, f"{c} std")]
        )
        for r in rows:
            options = ", ".join(f"{k}={v}" for k, v in r["options"].items()) or "-"
            seeds = ",".join("-" if s is None else str(s) for s in r["seeds"])
            cells = [r["columns"].get(c) for c in columns]
            lines.append(
                "| "
                + " | ".join([r["model"], r["method"], options, r["data"], seeds] + [_fmt(c) for c in cells])
                + " |"
            )
            writer.writerow(
                [
                    r["model"],
                    r["method"],
                    options,
                    r["data"],
                    seeds,
                    " ".join(r["runs"]),
                    "/".join(sorted(r["settings"])),
                ]
                + [
                    x
                    for c in cells
                    for x in ((f"{c[0]:.4f}", "" if c[1] is None else f"{c[1]:.4f}") if c else ("", ""))
                ]
            )
    settings = sorted({s for r in rows for s in r["settings"]})
    note = (
        f"\nOpen LLM tasks: {', '.join(settings) or 'none evaluated'} (zero_shot is the paper's setting; "
        "columns marked (chat) ran with the model's chat template, others name their setting); "
        f"columns: {variant} ({', '.join(f'{c} = {t} {m.split(chr(44))[0]}' for c, (t, m) in VARIANTS[variant].items())}). "
        "Values in percent; mean ± std over seeds where a configuration ran with several.\n"
    )
    (out / "table.md").write_text("\n".join(lines) + "\n" + note + agreement_note(agreement or []))
    return out / "table.md", out / "table.csv"


def agreement_note(rows: list[dict]) -> str:
    """The judges' agreement, under the table (``evaluation.agreement``)."""
    lines = []
    for r in rows:
        rho = "n/a" if r["spearman"] is None else f"{r['spearman']:.2f}"
        agree = "n/a" if r["agreement"] is None else f"{100 * r['agreement']:.0f}%"
        lines.append(
            f"- {r['judges'][0]} vs {r['judges'][1]}{' (' + r['variant'] + ')' if r['variant'] else ''}: Spearman {rho} over "
            f"{r['runs']} runs; verdicts agree on {agree} of {r['pairs']} instruction pairs"
        )
    return ("\nJudge agreement:\n" + "\n".join(lines) + "\n") if lines else ""
