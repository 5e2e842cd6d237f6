"""Data loading: format detection, normalisation, binarisation in the real schemas, bad input."""

import json

import pytest
from conftest import compose

from aot.data import DataError, binarise_by_median, load_split, normalise


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_sample_views():
    paired = load_split(compose("data=sample").data, "train")
    unpaired = load_split(compose("data=sample", "data.view=unpaired").data, "train")
    assert paired.kind == "paired" and len(paired.rows) == 1200
    assert unpaired.kind == "unpaired" and len(unpaired.rows) == 1200
    chosen = [r for r in unpaired.rows if r["label"]]
    rejected = [r for r in unpaired.rows if not r["label"]]
    assert 0.5 < len(chosen) / 1200 < 0.7  # unequal numbers
    assert paired.rows[0]["prompt"] == [{"role": "user", "content": paired.rows[0]["prompt"][0]["content"]}]
    assert paired.rows[0]["chosen"][0]["role"] == "assistant"
    assert len(rejected) > 0


def test_ultrafeedback_schema_keeps_only_the_answer(tmp_path):
    row = {
        "prompt": "Say hi.",
        "prompt_id": "abc",
        "chosen": [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi!"}],
        "rejected": [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "No."}],
        "messages": [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi!"}],
        "score_chosen": 8.0,
        "score_rejected": 2.0,
    }
    # A local folder stands in for the hub repo (datasets names its splits from the files).
    write_jsonl(tmp_path / "train.jsonl", [row] * 3)
    write_jsonl(tmp_path / "test.jsonl", [row])
    cfg = compose(
        "data=ultrafeedback", f"data.hub_id={tmp_path}", "data.train_split=train", "data.test_split=test"
    ).data
    split = load_split(cfg, "test")
    assert split.kind == "paired"
    assert split.rows[0]["chosen"] == [{"role": "assistant", "content": "Hi!"}]
    assert split.rows[0]["prompt"] == [{"role": "user", "content": "Say hi."}]


def test_helpsteer_schema_binarised_at_the_median(tmp_path):
    attrs = ["helpfulness", "correctness", "coherence", "complexity", "verbosity"]
    sums = [10, 12, 8, 15, 11]  # median 11: above -> chosen
    rows = [{"prompt": f"q{i}", "response": f"a{i}", **{a: 0 for a in attrs}} for i in range(5)]
    for r, s in zip(rows, sums):
        r["helpfulness"], r["correctness"] = min(4, s), s - min(4, s)
    write_jsonl(tmp_path / "train.jsonl", rows)
    write_jsonl(tmp_path / "validation.jsonl", rows)
    split = load_split(compose("data=helpsteer", f"data.hub_id={tmp_path}").data, "test")
    assert split.kind == "unpaired"
    assert [r["label"] for r in split.rows] == [False, True, False, True, False]
    assert split.rows[1]["completion"] == [{"role": "assistant", "content": "a1"}]


def test_beavertails_schema_binarised_with_balanced_ties(tmp_path):
    cats = compose("data=pku").data.attributes

    def row(i, safe, flagged):
        return {
            "prompt": f"q{i}",
            "response": f"a{i}",
            "is_safe": safe,
            "category": {c: c in flagged for c in cats},
        }

    rows = [
        row(0, True, []),
        row(1, True, []),
        row(2, True, []),
        row(3, False, [cats[0]]),
        row(4, False, [cats[0], cats[1]]),
    ]
    write_jsonl(tmp_path / "train.jsonl", rows)
    write_jsonl(tmp_path / "test.jsonl", rows)
    cfg = compose(
        "data=pku", f"data.hub_id={tmp_path}", "data.train_split=train", "data.test_split=test"
    ).data
    split = load_split(cfg, "train")
    # Scores 15, 15, 15, 13, 12: median 15 is the top score, so "above" would leave no chosen
    # rows; ties go to chosen, which balances the classes better (3 vs 2).
    assert [r["label"] for r in split.rows] == [True, True, True, False, False]


def test_binarise_by_median_plain():
    assert binarise_by_median([1, 2, 3, 4]) == [False, False, True, True]
    assert binarise_by_median([1, 2, 2, 2, 3, 3]) == [False, False, False, False, True, True]


def test_local_files_json_jsonl_parquet_and_chat_lists(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [
        {
            "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}],
            "completion": "Hello.",
            "label": True,
        },
        {"prompt": "Hi?", "completion": [{"role": "assistant", "content": "Go away."}], "label": False},
    ]
    (tmp_path / "a.json").write_text(json.dumps(rows))
    write_jsonl(tmp_path / "a.jsonl", rows)
    pq.write_table(
        pa.Table.from_pylist([{"prompt": "p", "chosen": "c", "rejected": "r"}]), tmp_path / "a.parquet"
    )
    for name, kind in (("a.json", "unpaired"), ("a.jsonl", "unpaired"), ("a.parquet", "paired")):
        split = load_split(compose("data=local", f"data.train_path={tmp_path / name}").data, "train")
        assert split.kind == kind
    assert split.rows[0]["chosen"] == [{"role": "assistant", "content": "c"}]


BAD_ROWS = [
    ({"prompt": "p", "chosen": "c"}, "row 1: field 'rejected': missing"),
    ({"prompt": "  ", "chosen": "c", "rejected": "r"}, "row 1: field 'prompt': empty text"),
    (
        {"prompt": "p", "chosen": [{"role": "assistant"}], "rejected": "r"},
        "row 1: field 'chosen': message 0 is malformed",
    ),
    (
        {"prompt": "p", "chosen": [{"role": "bot", "content": "x"}], "rejected": "r"},
        "row 1: field 'chosen': message 0 is malformed",
    ),
    (
        {"prompt": "p", "chosen": "c", "rejected": 5},
        "row 1: field 'rejected': expected a string or a non-empty list",
    ),
]


@pytest.mark.parametrize("bad,message", BAD_ROWS)
def test_bad_paired_rows_name_file_row_and_field(tmp_path, bad, message):
    path = write_jsonl(tmp_path / "train.jsonl", [{"prompt": "p", "chosen": "c", "rejected": "r"}, bad])
    with pytest.raises(DataError, match=message) as err:
        load_split(compose("data=local", f"data.train_path={path}").data, "train")
    assert path in str(err.value) and "data.skip_invalid=true" in str(err.value)


def test_label_must_be_a_bool(tmp_path):
    rows = [
        {"prompt": "p", "completion": "c", "label": True},
        {"prompt": "p", "completion": "c", "label": "yes"},
    ]
    path = write_jsonl(tmp_path / "u.jsonl", rows)
    with pytest.raises(DataError, match=r"u.jsonl: row 1: field 'label': expected true/false, got 'yes'"):
        load_split(compose("data=local", f"data.train_path={path}").data, "train")


def test_skip_invalid_counts_instead_of_stopping(tmp_path):
    rows = [{"prompt": "p", "chosen": "c", "rejected": "r"}] * 3 + [bad for bad, _ in BAD_ROWS]
    path = write_jsonl(tmp_path / "t.jsonl", rows)
    split = load_split(
        compose("data=local", f"data.train_path={path}", "data.skip_invalid=true").data, "train"
    )
    assert len(split.rows) == 3 and sum(split.skipped.values()) == len(BAD_ROWS)
    assert "skipped 5 invalid" in split.summary()


def test_unknown_format_and_bad_files(tmp_path):
    with pytest.raises(DataError, match="cannot tell the format"):
        normalise([{"question": "q", "answer": "a"}], "train", "x.jsonl", False)
    (tmp_path / "broken.jsonl").write_text('{"prompt": "p", "chosen": "c", "rejected": "r"}\n{oops\n')
    with pytest.raises(DataError, match=r"broken.jsonl: row 1 \(line 2\): invalid JSON"):
        load_split(compose("data=local", f"data.train_path={tmp_path / 'broken.jsonl'}").data, "train")
    with pytest.raises(DataError, match="data.test_path"):
        load_split(compose("data=local").data, "test")
