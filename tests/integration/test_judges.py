"""AlpacaEval judges, and how far they can be trusted.

A real judge: SmolLM2-135M-Instruct behind an OpenAI-compatible server on 127.0.0.1
(``python -m evaluation.judge_server``), reading the judge prompts of both formats the repo ships
(GPT-4-turbo's log-prob-weighted one, Llama-3-70B's ranking one) through alpaca_eval. A 135M judge
gives poor verdicts: that is the point. The chat framing, the parsing of real verdicts and the
accounting of failures run for real, and the report says how poor (verdicts parsed, failed and
dropped; position-swap consistency). The stand-in judge checks what only a deterministic judge
can: exact failure counts, a consistent judge scoring 1.
"""

import json
import re
import subprocess
import sys

import pytest
from helpers.standin_judge import StandinJudge

from evaluation.alpaca import evaluate as alpaca

pytestmark = pytest.mark.slow
INSTRUCTIONS = [
    ("What color is snow?", "Snow is white."),
    ("What sound does a cow make?", "A cow moos."),
    ("Where do bees live?", "Bees live in hives."),
]


#: what the real (slow, 135M) judge judges: two pairs and the same two swapped, in each format
REAL = INSTRUCTIONS[:2]


def instruction_set(tmp_path, extra=(), rows=INSTRUCTIONS):
    rows = [
        {"instruction": q, "output": a, "generator": "reference", "dataset": "local"}
        for q, a in [*rows, *extra]
    ]
    path = tmp_path / "alpaca_set.json"
    path.write_text(json.dumps(rows))
    return str(path)


@pytest.fixture(scope="module")
def judge_log(tmp_path_factory):
    return tmp_path_factory.mktemp("judge") / "answers.jsonl"


@pytest.fixture(scope="module")
def real_judge(smollm2, judge_log):
    """The judge server on a free port; its first line says where once the model is loaded."""
    cmd = [
        sys.executable,
        "-m",
        "evaluation.judge_server",
        "--model",
        str(smollm2),
        "--port",
        "0",
        "--log",
        str(judge_log),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()  # blocks until it serves, or returns "" if it died
    found = re.search(r"serving (\S+) at (http://\S+/v1)", line)
    assert found, f"the judge server did not start: {line!r} (exit {proc.poll()})"
    yield found.group(2)
    proc.kill()
    proc.wait()


@pytest.mark.parametrize("judge", ["gpt4", "llama3-70b"])
def test_a_real_model_judges_through_both_formats(lora_run, real_judge, judge_log, tmp_path, judge, capsys):
    judge_log.unlink(missing_ok=True)
    result = alpaca(str(lora_run), judge, instruction_set(tmp_path, rows=REAL), real_judge, max_new_tokens=16)
    out = capsys.readouterr().out
    assert (
        result["judge_label"] == f"smollm2-135m-instruct [{judge} prompt]"
    )  # never passes for the named judge
    v = result["verdicts"]
    assert (
        v["requested"] == len(REAL)
        and v["parsed"] + v["failed_dropped"] == len(REAL)
        and result["n_total"] == v["parsed"]
    )
    # its own cache, not the named judge's; the result of this generation in a folder of its own
    folder = (
        lora_run
        / "eval"
        / "alpaca"
        / f"{judge}@smollm2-135m-instruct"
        / result["outputs"].removesuffix(".jsonl")
    )
    annotations = json.loads((folder / "annotations.json").read_text())
    assert len(annotations) == len(REAL)  # every pair kept, its verdict parsed or not
    parsed = [a for a in annotations if a["preference"] not in (None, "None")]
    assert len(parsed) == v["parsed"]
    if judge == "gpt4":  # one token; the preference comes from the model's real top-5 log-probs
        assert all(
            len(a["preference_raw_completion"]["logprobs"]["content"][0]["top_logprobs"]) == 5 for a in parsed
        )
    answers = [json.loads(line) for line in judge_log.read_text().splitlines()]
    # The model read the judge prompt, in its chat template, for every pair and every swapped pair.
    assert len(answers) == len(REAL) + result["swap"]["requested"]
    for question, reference in REAL:
        assert (
            sum(
                question in a["messages"][-1]["content"] and reference in a["messages"][-1]["content"]
                for a in answers
            )
            == 2
        )
    swap = result["swap"]
    assert swap["sample"] <= v["parsed"] and (swap["consistent"] is None) == (swap["sample"] == 0)
    if swap["sample"]:
        assert 0 <= swap["consistent"] <= 1 and 0 <= swap["mean_shift"] <= 1
    if v["parsed"]:
        assert 0 <= result["win_rate"] <= 100
    else:  # nothing parsed: no win rate to report, and the report says so
        assert result["win_rate"] is None and "win rate: none: no verdict parsed" in out
    assert f"verdicts parsed {v['parsed']}/{len(REAL)} ({v['failed_dropped']} failed, dropped)" in out
    assert json.loads((folder / "result.json").read_text())["verdicts"] == v


@pytest.mark.parametrize("judge", ["gpt4", "llama3-70b"])
def test_failed_verdicts_are_counted_and_a_consistent_judge_scores_one(lora_run, tmp_path, judge, capsys):
    malformed = [("[malformed] Name a fruit.", "An apple.")]
    with StandinJudge() as url:
        result = alpaca(str(lora_run), judge, instruction_set(tmp_path, malformed), url, max_new_tokens=16)
    assert result["verdicts"] == {"requested": 4, "parsed": 3, "failed_dropped": 1}
    assert result["n_total"] == 3
    assert (
        result["swap"]["sample"] == 3 and result["swap"]["consistent"] == 1.0
    )  # longer answer wins, either side
    assert result["swap"]["mean_shift"] == pytest.approx(0.0, abs=0.21)  # its weighted verdicts are 0.9 / 0.1
    out = capsys.readouterr().out
    assert "verdicts parsed 3/4 (1 failed, dropped); swap consistency 1.00 on 3 pairs" in out
