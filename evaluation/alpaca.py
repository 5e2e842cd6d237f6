"""AlpacaEval for a run: generate with the model's own chat template, then judge.

    make eval-alpaca RUN=outputs/merlinite-aot_unpaired-ultrafeedback JUDGE=gpt4
    make eval-alpaca RUN=... JUDGE=llama3-70b                     # served by slurm/serve_judge.sh
    make eval-alpaca RUN=... JUDGE=llama3-70b JUDGE_URL=http://host:8000/v1
    make eval-alpaca RUN=... ALPACA_SET=my_set.json                # offline / custom instructions

1. Instructions and the GPT-4-turbo reference outputs come from the raw JSON file in the
   ``tatsu-lab/alpaca_eval`` dataset repo (``alpaca_eval_gpt4_baseline.json``: 805 records of
   {instruction, output, generator, dataset}); alpaca_eval's own dataset loader is a script
   that datasets >= 4 refuses. ``ALPACA_SET`` takes a local file of the same records.
2. Generations are greedy by default, settings recorded; they are appended row by row to a file
   keyed on the settings and the instruction set, so an interrupted run resumes and a rerun
   reuses them.
3. The judge is a committed annotator config (``evaluation/judges/<judge>/configs.yaml``,
   alpaca_eval's format) rendered with the endpoint URL into the run's eval folder, so
   annotations are cached per run. Keys come only from the environment.
4. Reported: the raw win rate always; the length-controlled one where alpaca_eval can fetch its
   GLM inputs (they download from the hub), else marked unavailable with the reason.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.error
import urllib.request
from pathlib import Path

import torch
import yaml
from huggingface_hub import hf_hub_download

from aot.files import short_hash
from aot.models import load_for_generation
from evaluation.open_llm import base_run_dir

JUDGES = Path(__file__).parent / "judges"
HUB_SET = ("tatsu-lab/alpaca_eval", "alpaca_eval_gpt4_baseline.json")
GENERATION = {"max_new_tokens": 2048, "do_sample": False, "batch_size": 8}  # greedy: reproducible
log = logging.getLogger("aot")


class JudgeUnreachable(RuntimeError):
    pass


# --- instructions and generation -------------------------------------------------------------


def load_instruction_set(path: str | None) -> tuple[list[dict], str]:
    """Records {instruction, output, generator, dataset}; ``output`` is the reference answer."""
    if path:
        source = Path(path)
    else:
        source = Path(hf_hub_download(repo_id=HUB_SET[0], filename=HUB_SET[1], repo_type="dataset"))
    records = json.loads(source.read_text())
    for i, r in enumerate(records):
        missing = [k for k in ("instruction", "output") if not isinstance(r.get(k), str) or not r[k].strip()]
        if missing:
            raise ValueError(f"{source}: record {i}: missing or empty {', '.join(missing)}")
    return records, str(source)


def _load_model(run_dir: Path):
    """The run's model (its adapter merged into the base, or its own weights; a base row's model
    itself) and tokenizer, on the GPU when there is one."""
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    base = cfg["model"]["name_or_path"]
    is_base = cfg.get("loss", {}).get("name") == "base"  # outputs/<id>-base: the model itself
    if (run_dir / "adapter_config.json").is_file():
        model, tokenizer = load_for_generation(base, run_dir, dtype, tokenizer_from=run_dir)
    else:
        model, tokenizer = load_for_generation(base if is_base else str(run_dir), dtype=dtype)
    if not tokenizer.chat_template and cfg["model"].get("chat_template"):  # a recipe's fallback
        tokenizer.chat_template = cfg["model"]["chat_template"]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return model.to(device), tokenizer, cfg


def generate(run_dir: Path, records: list[dict], settings: dict) -> Path:
    """Model outputs for every instruction, resumable; returns the JSONL file."""
    key = short_hash(
        json.dumps({"settings": settings, "instructions": [r["instruction"] for r in records]}), 10
    )
    out_dir = run_dir / "eval" / "alpaca"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"outputs-{key}.jsonl"
    (out_dir / f"outputs-{key}.settings.json").write_text(json.dumps(settings, indent=2) + "\n")
    done = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    if len(done) >= len(records):
        log.info("reusing %d generated outputs from %s", len(done), path)
        return path
    if done:
        log.info("resuming generation at %d / %d (%s)", len(done), len(records), path)
    model, tokenizer, _ = _load_model(run_dir)
    batch = int(settings["batch_size"])
    with path.open("a") as f:
        for start in range(len(done), len(records), batch):
            chunk = records[start : start + batch]
            prompts = [
                tokenizer.apply_chat_template(
                    [{"role": "user", "content": r["instruction"]}],
                    add_generation_prompt=True,
                    tokenize=False,
                )
                for r in chunk
            ]
            enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(
                model.device
            )
            with torch.no_grad():
                ids = model.generate(
                    **enc,
                    max_new_tokens=int(settings["max_new_tokens"]),
                    do_sample=bool(settings["do_sample"]),
                    pad_token_id=tokenizer.pad_token_id,
                )
            texts = tokenizer.batch_decode(ids[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
            for r, text in zip(chunk, texts):
                f.write(
                    json.dumps(
                        {
                            "instruction": r["instruction"],
                            "output": text.strip(),
                            "generator": run_dir.name,
                            "dataset": r.get("dataset", "local"),
                        }
                    )
                    + "\n"
                )
            f.flush()  # each batch survives an interruption
    return path


# --- judging ---------------------------------------------------------------------------------------


def judge_config(judge: str) -> tuple[dict, str]:
    """The committed annotator config and its default endpoint (None: OpenAI's own)."""
    path = JUDGES / judge / "configs.yaml"
    if not path.is_file():
        valid = sorted(p.name for p in JUDGES.iterdir() if (p / "configs.yaml").is_file())
        raise ValueError(f"unknown judge {judge!r}; valid: {', '.join(valid)} (evaluation/judges/)")
    text = path.read_text()
    default_url = next(
        (ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("# default_url:")), None
    )
    return yaml.safe_load(text), default_url


def render_judge(judge: str, url: str | None, out_dir: Path, model: str | None = None) -> Path:
    """alpaca_eval's configs.yaml for this judge, with absolute template paths, the endpoint and
    the model to request (``model``: what the server serves, when not the configured name)."""
    import alpaca_eval  # optional: the eval extra

    configs, _ = judge_config(judge)
    package_configs = Path(alpaca_eval.__file__).parent / "evaluators_configs"
    for cfg in configs.values():
        cfg["prompt_template"] = str(package_configs / cfg["prompt_template"])
        if model:
            cfg["completions_kwargs"]["model_name"] = model
        if url:
            cfg["completions_kwargs"].setdefault("client_kwargs", {})["base_url"] = url
    folder = out_dir / judge
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "configs.yaml").write_text(yaml.safe_dump(configs))
    return folder / "configs.yaml"


def check_reachable(url: str, judge: str) -> list[str]:
    """The model ids the server reports at ``/models`` (empty if it will not say)."""
    request = urllib.request.Request(url.rstrip("/") + "/models")
    key = os.environ.get("OPENAI_API_KEY")
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        body = json.loads(urllib.request.urlopen(request, timeout=10).read() or b"{}")
    except urllib.error.HTTPError:
        return []  # the server answered: reachable (auth or routing is the client's business)
    except (urllib.error.URLError, OSError) as e:
        raise JudgeUnreachable(
            f"judge {judge!r} at {url} is unreachable ({getattr(e, 'reason', e)}). Start it with "
            "`sbatch slurm/serve_judge.sh` (it prints the URL to pass as JUDGE_URL=...), or point "
            "JUDGE_URL at any OpenAI-compatible endpoint."
        ) from None
    except ValueError:
        return []
    return [m["id"] for m in body.get("data", []) if isinstance(m, dict) and "id" in m]


def judge_model(judge: str, configured: str, served: list[str]) -> tuple[str, str]:
    """(model to request, column label). The label is the model that judged: the configured one,
    or the one the server reports when it serves another (then with the judge's prompt named), so
    that verdicts of another model, a stand-in's say, never pass for the named judge's, and
    the same model on any node lands in one column."""
    if not served or configured in served:
        return configured, configured
    if len(served) > 1:
        raise JudgeUnreachable(
            f"the judge server serves {served} but not {configured!r} (evaluation/judges/{judge}/configs.yaml)"
        )
    return served[0], f"{served[0]} [{judge} prompt]"


def judge_outputs(
    run_dir: Path, outputs_path: Path, records: list[dict], judge: str, url: str | None
) -> dict:
    import pandas as pd  # optional: the eval extra (pinned below 3 for alpaca_eval)
    from alpaca_eval.main import evaluate as alpaca_evaluate

    configs, default_url = judge_config(judge)
    configured = next(iter(configs.values()))["completions_kwargs"]["model_name"]
    url = url or default_url
    served = []
    if url:
        served = check_reachable(url, judge)
        os.environ.setdefault(
            "OPENAI_API_KEY", os.environ.get("JUDGE_API_KEY", "EMPTY")
        )  # local servers take any
    elif not os.environ.get("OPENAI_API_KEY"):
        raise JudgeUnreachable(f"judge {judge!r} needs OPENAI_API_KEY in the environment (or JUDGE_URL=...)")
    model, label = judge_model(judge, configured, served)
    out_dir = run_dir / "eval" / "alpaca"
    config = render_judge(judge, url, out_dir, model)
    model_outputs = pd.read_json(outputs_path, lines=True)
    reference = pd.DataFrame(records)
    leaderboard, annotations = alpaca_evaluate(
        model_outputs=model_outputs,
        reference_outputs=reference,
        annotators_config=str(config.resolve()),
        output_path=str((out_dir / judge).resolve()),
        precomputed_leaderboard=None,
        is_return_instead_of_print=True,
        fn_metric="get_winrate",
        sort_by="win_rate",
        is_overwrite_leaderboard=True,
    )
    row = leaderboard.loc[run_dir.name].to_dict()
    result = {
        "judge": judge,
        "judge_label": label,
        "judge_model": model,
        "url": url,
        "win_rate": float(row["win_rate"]),
        "standard_error": float(row["standard_error"]),
        "n_total": int(row["n_total"]),
        "avg_length": float(row["avg_length"]),
        "instruction_set": len(records),
    }
    try:  # the length-controlled win rate fetches instruction difficulties from the hub
        from alpaca_eval.metrics import get_length_controlled_winrate

        lc = get_length_controlled_winrate(annotations, save_weights_dir=None)
        result["lc_win_rate"] = float(lc["length_controlled_winrate"])
    except Exception as e:  # noqa: BLE001 - any failure here only means "not available"
        result["lc_win_rate"] = None
        result["lc_unavailable"] = f"{type(e).__name__}: {str(e)[:200]}"
    (out_dir / judge / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def evaluate(
    run: str | None,
    judge: str,
    alpaca_set: str | None = None,
    judge_url: str | None = None,
    max_new_tokens: int | None = None,
    model: str | None = None,
    outputs: str | Path = "outputs",
) -> dict:
    """AlpacaEval of a run directory, or (``model=``: a recipe name, hub id or local directory)
    of a base model, written to ``outputs/<id>-base/`` as the paper's base rows."""
    if bool(run) == bool(model):
        raise ValueError("give exactly one of RUN=<run dir> or MODEL=<recipe or hub id>")
    if model:
        run = str(base_run_dir(model, outputs))
    run_dir = Path(run)
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{run_dir}/config.yaml: not a run directory (make train writes it)")
    judge_config(judge)  # unknown judge: fail before generating
    records, source = load_instruction_set(alpaca_set)
    settings = {**GENERATION, "instruction_set": source}
    if max_new_tokens:
        settings["max_new_tokens"] = max_new_tokens
    outputs = generate(run_dir, records, settings)
    try:
        result = judge_outputs(run_dir, outputs, records, judge, judge_url)
    except JudgeUnreachable as e:
        raise JudgeUnreachable(f"{e}\nGenerated outputs are kept in {outputs}.") from None
    lc = f"{result['lc_win_rate']:.2f}" if result["lc_win_rate"] is not None else "unavailable"
    print(
        f"{run_dir.name}: judge {judge}, {result['n_total']} instructions, length-controlled win rate: {lc}"
    )
    print(f"win rate: {result['win_rate']:.2f}")
    return result
