"""Preference data: loading, binarising, validating and normalising rows.

Two row formats, detected from the columns:

- paired:   {"prompt", "chosen", "rejected"}
- unpaired: {"prompt", "completion", "label"} (label: bool, True = desirable)

Text fields are plain strings or chat message lists ([{"role", "content"}, ...]). Every row is
normalised to messages: ``prompt`` a list ending with a user (or system) turn, completions a
list of assistant turns. A completion given as a whole conversation (UltraFeedback's
``chosen``/``rejected`` repeat the prompt) keeps only its trailing assistant turns.

Bad rows stop the run with ``DataError`` naming the file, row and field; with
``skip_invalid=True`` they are skipped and counted instead, never dropped silently.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

import datasets
import pyarrow.parquet as pq

from aot.names import DATA_SOURCES

PAIRED = ("prompt", "chosen", "rejected")
UNPAIRED = ("prompt", "completion", "label")
ROLES = ("system", "user", "assistant")
#: the bundled sample set (package data; written by scripts/make_sample_data.py)
SAMPLE_DIR = Path(str(files("aot").joinpath("resources", "sample")))


class DataError(ValueError):
    """A dataset problem, with the file, row and field it concerns."""


@dataclass
class Split:
    """One named split, normalised; ``skipped`` counts invalid rows by reason."""

    name: str
    source: str
    kind: str  # "paired" | "unpaired"
    rows: list[dict]
    skipped: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        n = len(self.rows)
        extra = ""
        if self.kind == "unpaired":
            chosen = sum(r["label"] for r in self.rows)
            extra = f" ({chosen} chosen, {n - chosen} rejected)"
        skipped = sum(self.skipped.values())
        skip = f"; skipped {skipped} invalid: {self.skipped}" if skipped else ""
        return f"{self.name}: {n} {self.kind} rows{extra} from {self.source}{skip}"


# --- format detection and validation ---------------------------------------------------------


def detect_kind(columns, source: str) -> str:
    cols = set(columns)
    if set(PAIRED) <= cols:
        return "paired"
    if set(UNPAIRED) <= cols:
        return "unpaired"
    raise DataError(
        f"{source}: cannot tell the format from columns {sorted(cols)}; expected "
        f"{'/'.join(PAIRED)} (paired) or {'/'.join(UNPAIRED)} (unpaired)"
    )


def _messages(value, where: str, completion: bool) -> list[dict]:
    if isinstance(value, str):
        if not value.strip():
            raise DataError(f"{where}: empty text")
        return [{"role": "assistant" if completion else "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise DataError(
            f"{where}: expected a string or a non-empty list of chat messages, got {type(value).__name__}"
        )
    for i, m in enumerate(value):
        if not (isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str)):
            raise DataError(
                f"{where}: message {i} is malformed (needs role in {ROLES} and string content): {m!r}"
            )
        if not m["content"].strip():
            raise DataError(f"{where}: message {i} has empty content")
    if completion:
        tail = len(value)
        while tail > 0 and value[tail - 1]["role"] == "assistant":
            tail -= 1
        if tail == len(value):
            raise DataError(f"{where}: a completion must end with an assistant message")
        return [dict(role=m["role"], content=m["content"]) for m in value[tail:]]
    if value[-1]["role"] == "assistant":
        raise DataError(f"{where}: a prompt must not end with an assistant message")
    return [dict(role=m["role"], content=m["content"]) for m in value]


def normalise_row(row: dict, kind: str, where: str) -> dict:
    """Validate one row and return it as messages; raises DataError naming ``where`` and the field."""
    fields = PAIRED if kind == "paired" else UNPAIRED
    for f in fields:
        if row.get(f) is None:
            raise DataError(f"{where}: field '{f}': missing")
    out = {"prompt": _messages(row["prompt"], f"{where}: field 'prompt'", completion=False)}
    if kind == "paired":
        for f in ("chosen", "rejected"):
            out[f] = _messages(row[f], f"{where}: field '{f}'", completion=True)
    else:
        if not isinstance(row["label"], bool):
            raise DataError(f"{where}: field 'label': expected true/false, got {row['label']!r}")
        out["completion"] = _messages(row["completion"], f"{where}: field 'completion'", completion=True)
        out["label"] = row["label"]
    return out


def normalise(records, name: str, source: str, skip_invalid: bool, kind: str | None = None) -> Split:
    records = list(records)
    if not records:
        raise DataError(f"{source}: split '{name}' has no rows")
    kind = kind or detect_kind(records[0].keys(), source)
    rows, skipped = [], {}
    for i, record in enumerate(records):
        try:
            rows.append(normalise_row(record, kind, f"{source}: row {i}"))
        except DataError as e:
            if not skip_invalid:
                raise DataError(f"{e} (set data.skip_invalid=true to skip and count such rows)") from None
            reason = str(e).split(": ", 2)[-1].split(":")[0]
            skipped[reason] = skipped.get(reason, 0) + 1
    if not rows:
        raise DataError(f"{source}: every row of split '{name}' is invalid: {skipped}")
    return Split(name, source, kind, rows, skipped)


# --- binarising scored single responses (HelpSteer, BeaverTails) -----------------------------


def binarise_by_median(scores: list[float]) -> list[bool]:
    """Label a score chosen when above the median (the paper's rule).

    Ties at the median go to the side that leaves the two classes closer to balanced (for
    BeaverTails most answers share the top score, so "above the median" alone could leave no
    chosen rows at all).
    """
    med = statistics.median(scores)
    above = [s > med for s in scores]
    at_or_above = [s >= med for s in scores]
    half = len(scores) / 2
    return above if abs(sum(above) - half) <= abs(sum(at_or_above) - half) else at_or_above


def helpsteer_rows(records, attributes) -> list[dict]:
    """HelpSteer: {prompt, response, helpfulness, correctness, ...} -> unpaired rows."""
    records = list(records)
    labels = binarise_by_median([sum(float(r[a]) for a in attributes) for r in records])
    return [{"prompt": r["prompt"], "completion": r["response"], "label": y} for r, y in zip(records, labels)]


def beavertails_rows(records, attributes) -> list[dict]:
    """BeaverTails: {prompt, response, is_safe, category: {harm: bool}} -> unpaired rows.

    Score = is_safe + number of harm categories *not* flagged (each attribute high when good).
    """
    records = list(records)
    scores = []
    for r in records:
        cats = r["category"] or {}
        scores.append(float(bool(r["is_safe"])) + sum(not cats.get(a, False) for a in attributes))
    labels = binarise_by_median(scores)
    return [{"prompt": r["prompt"], "completion": r["response"], "label": y} for r, y in zip(records, labels)]


# --- loaders -----------------------------------------------------------------------------------


def read_file(path: str | Path) -> list[dict]:
    """Rows of a JSON (list of objects), JSONL or Parquet file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return pq.read_table(path).to_pylist()
    text = path.read_text()
    if suffix == ".json":
        data = json.loads(text)
        if not isinstance(data, list):
            raise DataError(f"{path}: a .json file must hold a list of row objects")
        return data
    if suffix == ".jsonl":
        rows = []
        for i, line in enumerate(text.splitlines()):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DataError(
                        f"{path}: row {len(rows)} (line {i + 1}): invalid JSON: {e.msg}"
                    ) from None
        return rows
    raise DataError(f"{path}: unsupported file type {suffix!r}; use .json, .jsonl or .parquet")


def _hub(data_cfg, split: str):
    return datasets.load_dataset(data_cfg.hub_id, split=split)


def load_split(data_cfg, which: str) -> Split:
    """Load ``which`` ("train" or "test") as configured by a ``recipes/data/*.yaml`` recipe."""
    source, skip = data_cfg.source, bool(data_cfg.get("skip_invalid", False))
    split_name = data_cfg.get(f"{which}_split") or which
    if source == "sample":  # its test split is paired (the long view's own), so margins can be plotted
        view = data_cfg.view if which == "train" or data_cfg.view == "long" else "paired"
        path = SAMPLE_DIR / f"{view}_{which}.jsonl"
        split = normalise(read_file(path), which, str(path), skip)
    elif source == "local":
        path = data_cfg.get(f"{which}_path")
        if not path:
            raise DataError(f"data=local needs data.{which}_path=<file.json|jsonl|parquet>")
        split = normalise(read_file(path), which, str(path), skip)
    elif source == "hub_paired":
        split = normalise(
            _hub(data_cfg, split_name), which, f"{data_cfg.hub_id}[{split_name}]", skip, "paired"
        )
    elif source in ("helpsteer", "beavertails"):
        to_rows = helpsteer_rows if source == "helpsteer" else beavertails_rows
        rows = to_rows(_hub(data_cfg, split_name), list(data_cfg.attributes))
        split = normalise(rows, which, f"{data_cfg.hub_id}[{split_name}]", skip, "unpaired")
    else:
        raise DataError(f"unknown data.source {source!r}; valid: {', '.join(DATA_SOURCES)}")
    limit = data_cfg.get(f"max_{which}_samples")
    if limit:
        split.rows = split.rows[: int(limit)]
    return split


def unpair(split: Split) -> Split:
    """Paired rows -> unpaired rows (one chosen and one rejected row per pair), e.g. for KTO."""
    if split.kind == "unpaired":
        return split
    rows = []
    for r in split.rows:
        rows.append({"prompt": r["prompt"], "completion": r["chosen"], "label": True})
        rows.append({"prompt": r["prompt"], "completion": r["rejected"], "label": False})
    return Split(split.name, split.source, "unpaired", rows, split.skipped)
