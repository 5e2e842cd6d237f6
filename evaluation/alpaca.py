"""AlpacaEval for a run: generate with the model's own chat template, then judge, and say how far
the judge can be trusted.

    make eval-alpaca RUN=outputs/merlinite-aot_unpaired-ultrafeedback JUDGE=gpt4
    make eval-alpaca RUN=... JUDGE=llama3-70b                     # served by slurm/serve_judge.sh
    make eval-alpaca RUN=... JUDGE=llama3-70b JUDGE_URL=http://host:8000/v1
    make eval-alpaca RUN=... GEN=vllm DECODING=leaderboard TP=2   # vLLM, the leaderboard's sampling
    make eval-alpaca RUN=... ALPACA_SET=my_set.json                # offline / custom instructions

1. Instructions and the GPT-4-turbo reference outputs come from the raw JSON file in the
   ``tatsu-lab/alpaca_eval`` dataset repo (``alpaca_eval_gpt4_baseline.json``: 805 records of
   {instruction, output, generator, dataset}); alpaca_eval's own dataset loader is a script
   that datasets >= 4 refuses. ``ALPACA_SET`` takes a local file of the same records.
2. Generation (``evaluation.generation``): a decoding preset and an engine, recorded with the
   outputs, resumable.
3. Judging (``evaluation.judging``): a committed annotator config rendered with the endpoint into
   the run's eval folder (annotations cached per run); the verdicts counted (parsed, failed and
   dropped) and a sample judged again with the answers swapped.
4. Reported in ``<run>/eval/alpaca/<judge>[@<served model>]/outputs-<key>/result.json``, one
   folder per generation (``<key>``: the outputs file's, ``eval/alpaca/outputs-<key>.jsonl``), so
   that no engine, decoding, length or instruction set replaces another's result: the raw win
   rate always; the length-controlled one on the AlpacaEval set where alpaca_eval can fetch its
   GLM inputs (from the hub), computed on every row (failed verdicts included, as upstream) with
   each row's own instruction difficulty, else marked unavailable with the reason (a custom
   ``ALPACA_SET`` never gets one: the difficulties are the AlpacaEval instructions'); the
   generation settings; the verdict counts and swap consistency.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from huggingface_hub import hf_hub_download

from evaluation.generation import describe, generate, settings_for
from evaluation.judging import (
    JudgeUnreachable,
    annotate,
    connect,
    judge_config,
    render_judge,
    swap_consistency,
    swap_sample,
    verdicts,
)
from evaluation.runs import base_run_dir, run_config
from evaluation.vllm_env import vllm_python

HUB_SET = ("tatsu-lab/alpaca_eval", "alpaca_eval_gpt4_baseline.json")
#: the instruction set's name in the generation settings when it is the hub file
ALPACA_EVAL = "alpaca_eval"
log = logging.getLogger("aot")


def load_instruction_set(path: str | None) -> tuple[list[dict], str]:
    """(records {instruction, output, generator, dataset}, the set's name: ``ALPACA_EVAL`` for the
    hub file, else the local file's path); ``output`` is the reference answer."""
    if path:
        source = Path(path)
    else:
        source = Path(hf_hub_download(repo_id=HUB_SET[0], filename=HUB_SET[1], repo_type="dataset"))
    records = json.loads(source.read_text())
    for i, r in enumerate(records):
        missing = [k for k in ("instruction", "output") if not isinstance(r.get(k), str) or not r[k].strip()]
        if missing:
            raise ValueError(f"{source}: record {i}: missing or empty {', '.join(missing)}")
    return records, str(source) if path else ALPACA_EVAL


def judge_folder(judge: str, other_model: str | None) -> str:
    """Where a judge's annotations are cached: one folder per judge config and the model that
    judged when it is not the configured one (alpaca_eval keys its cache on the pair and the
    config's name only, so two models must never share a folder). Each generation's result goes
    in a subfolder named after its outputs file."""
    return judge if other_model is None else f"{judge}@{re.sub(r'[^A-Za-z0-9._-]+', '_', other_model)}"


def length_controlled(annotations: list[dict], records: list[dict], instruction_set: str) -> dict:
    """alpaca_eval's length-controlled win rate of every annotated row (failed verdicts included,
    as upstream passes them), each row indexed by its instruction's place in the AlpacaEval set:
    alpaca_eval reads a row's instruction difficulty at that index. ``{"lc_win_rate": None,
    "lc_unavailable": reason}`` for another instruction set, or when the GLM inputs cannot be
    fetched."""
    if instruction_set != ALPACA_EVAL:
        reason = f"instruction set {instruction_set}: the GLM's instruction difficulties are AlpacaEval's"
        return {"lc_win_rate": None, "lc_unavailable": reason}
    try:  # the length-controlled win rate fetches instruction difficulties from the hub
        import pandas as pd  # optional: the eval extra
        from alpaca_eval.metrics import get_length_controlled_winrate

        place = {r["instruction"]: i for i, r in enumerate(records)}
        rows = pd.DataFrame(annotations, index=[place[a["instruction"]] for a in annotations]).sort_index()
        lc = get_length_controlled_winrate(rows, save_weights_dir=None)
        return {
            "lc_win_rate": float(lc["length_controlled_winrate"]),
            "lc_standard_error": float(lc["lc_standard_error"]),
        }
    except Exception as e:  # noqa: BLE001 - any failure here only means "not available"
        return {"lc_win_rate": None, "lc_unavailable": f"{type(e).__name__}: {str(e)[:200]}"}


def judge_outputs(
    run_dir: Path,
    outputs_path: Path,
    records: list[dict],
    judge: str,
    url: str | None,
    settings: dict,
    swap: bool = True,
) -> dict:
    """Judge a run's outputs against the references; the result, with the judge's trust measures."""
    url, model, label = connect(judge, url)
    judges = run_dir / "eval" / "alpaca" / judge_folder(judge, model if label != model else None)
    config = render_judge(judge, url, judges, model)
    folder = judges / outputs_path.stem  # outputs-<key>: this generation's own result
    outputs = [json.loads(line) for line in outputs_path.read_text().splitlines()]
    outputs = [{k: v for k, v in o.items() if k != "index"} for o in outputs]
    row, preferences, annotations = annotate(config, outputs, records, folder, run_dir.name)
    result = {
        "judge": judge,
        "judge_label": label,
        "judge_model": model,
        "url": url,
        "decoding": settings.get("decoding", "greedy"),
        "variant": describe(settings),
        "outputs": outputs_path.name,
        "generation": settings,
        "win_rate": None if row["win_rate"] is None else float(row["win_rate"]),
        "standard_error": None if row["standard_error"] is None else float(row["standard_error"]),
        "n_total": int(row["n_total"]),
        "avg_length": float(row["avg_length"]),
        "instruction_set": len(records),
        "verdicts": verdicts(len(records), preferences),
    }
    if swap:  # the same pairs with the answers in each other's place
        sample = swap_sample(records)
        swapped_outputs = [{**records[i], "generator": "swapped"} for i in sample]
        swapped_refs = [outputs[i] for i in sample]
        _, swapped, _ = annotate(config, swapped_outputs, swapped_refs, folder / "swapped", "swapped")
        result["swap"] = swap_consistency(preferences, swapped, len(sample))
    result.update(length_controlled(annotations, records, settings.get("instruction_set", ALPACA_EVAL)))
    (folder / "verdicts.json").write_text(json.dumps(preferences, indent=1) + "\n")
    (folder / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def evaluate(
    run: str | None,
    judge: str,
    alpaca_set: str | None = None,
    judge_url: str | None = None,
    max_new_tokens: int | None = None,
    model: str | None = None,
    outputs: str | Path = "outputs",
    decoding: str = "greedy",
    engine: str = "hf",
    tensor_parallel_size: int = 1,
    swap: bool = True,
) -> dict:
    """AlpacaEval of a run directory, or (``model=``: a recipe name, hub id or local directory)
    of a base model, written to ``outputs/<id>-base/`` as the paper's base rows."""
    if bool(run) == bool(model):
        raise ValueError("give exactly one of RUN=<run dir> or MODEL=<recipe or hub id>")
    if model:
        run = str(base_run_dir(model, outputs))
    run_dir = Path(run)
    run_config(run_dir)  # not a run directory: a clear error before anything loads
    judge_config(judge)  # unknown judge: fail before generating
    if engine == "vllm":
        vllm_python()  # a missing vLLM: said before the instruction set is fetched
    records, source = load_instruction_set(alpaca_set)
    extra = {"tensor_parallel_size": tensor_parallel_size} if engine == "vllm" else {}
    settings = settings_for(decoding, engine, max_new_tokens, instruction_set=source, **extra)
    outputs_path = generate(run_dir, records, settings)
    try:
        result = judge_outputs(run_dir, outputs_path, records, judge, judge_url, settings, swap)
    except JudgeUnreachable as e:
        raise JudgeUnreachable(f"{e}\nGenerated outputs are kept in {outputs_path}.") from None
    lc = f"{result['lc_win_rate']:.2f}" if result["lc_win_rate"] is not None else "unavailable"
    v, sw = result["verdicts"], result.get("swap") or {}
    trust = f"verdicts parsed {v['parsed']}/{v['requested']} ({v['failed_dropped']} failed, dropped)"
    if sw.get("sample"):
        trust += f"; swap consistency {sw['consistent']:.2f} on {sw['sample']} pairs"
    print(
        f"{run_dir.name}: judge {judge} ({decoding}), {result['n_total']} instructions, length-controlled win rate: {lc}"
    )
    print(f"judge: {trust}")
    print(
        "win rate: "
        + ("none: no verdict parsed" if result["win_rate"] is None else f"{result['win_rate']:.2f}")
    )
    return result
