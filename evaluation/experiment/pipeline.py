"""The experiment's stages: data from the reference, training runs, held-out evaluation, summary.

Every stage is cached under the output directory (generations, finished runs, evaluations), so
an interrupted experiment rerun picks up where it stopped.
"""

from __future__ import annotations

import json
import logging
import random
import statistics
import time
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm import tqdm
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from aot.batches import PreferenceCollator, tokenize_split
from aot.config import compose
from aot.data import Split, binarise_by_median
from aot.files import atomic_write
from aot.fixtures import ensure_smollm2
from aot.metrics import fsd_violation
from aot.models import load_for_generation
from aot.quantiles import quantile_table
from aot.run import train
from aot.scoring import row_logps
from evaluation.experiment.report import plot_reward_vs_kl, plot_true_quantiles, table
from evaluation.experiment.settings import UNPAIRED_METHODS, Settings, make_prompts, seeds_of
from evaluation.report import mean_std

log = logging.getLogger("aot")


def vader():
    """VADER's compound score of a text, in [-1, 1]: the experiment's true reward."""
    analyzer = SentimentIntensityAnalyzer()
    return lambda text: analyzer.polarity_scores(text)["compound"]


@torch.no_grad()
def sample(
    model, tokenizer, prompts: list[str], max_new_tokens: int, batch: int, seed: int, desc: str
) -> list[str]:
    """One completion per prompt, temperature 1 (full softmax: no top-k/top-p), chat template."""
    torch.manual_seed(seed)
    out = []
    for start in tqdm(range(0, len(prompts), batch), desc=desc, unit="batch"):
        chunk = prompts[start : start + batch]
        texts = [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False
            )
            for p in chunk
        ]
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        ids = model.generate(
            **enc, do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
        )  # fmt: skip
        out += [
            t.strip()
            for t in tokenizer.batch_decode(ids[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        ]
    return out


def _cached_json(path: Path, build):
    """The JSON at ``path``, built and written (atomically) on the first call."""
    if path.is_file():
        return json.loads(path.read_text())
    value = build()
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(value, indent=1) + "\n"))
    return value


def build_data(out: Path, base: str, s: Settings) -> dict[str, Path]:
    """Generations from the reference, VADER scores, and the paired / unpaired training files."""
    train_prompts, heldout = make_prompts(s.train_prompts, s.heldout_prompts)
    score = vader()

    def generate():
        model, tok = load_for_generation(base)
        rows = []
        for k in (0, 1):  # two completions per prompt, each from its own seeded pass
            texts = sample(
                model, tok, train_prompts + heldout, s.max_new_tokens, s.gen_batch, 100 + k, f"data {k + 1}/2"
            )
            rows.append(texts)
        return [
            {
                "prompt": p,
                "split": "train" if i < len(train_prompts) else "heldout",
                "completions": [rows[0][i], rows[1][i]],
            }
            for i, p in enumerate(train_prompts + heldout)
        ]

    generations = _cached_json(out / "data" / "generations.json", generate)
    for g in tqdm(generations, desc="VADER scores", unit="prompt"):
        g["scores"] = [score(c) for c in g["completions"]]
    rng = random.Random(0)
    paired = {"train": [], "heldout": []}
    for g in generations:
        (a, b), (sa, sb) = g["completions"], g["scores"]
        if sa != sb or g["split"] == "heldout":  # ties carry no preference to train on
            chosen, rejected = (a, b) if sa >= sb else (b, a)
            paired[g["split"]].append({"prompt": g["prompt"], "chosen": chosen, "rejected": rejected})
    train = [g for g in generations if g["split"] == "train"]
    picks = [rng.randrange(2) for _ in train]  # one completion per prompt: no prompt on both sides
    labels = binarise_by_median([g["scores"][k] for g, k in zip(train, picks)])  # above the median
    unpaired = [
        {"prompt": g["prompt"], "completion": g["completions"][k], "label": y}
        for g, k, y in zip(train, picks, labels)
    ]
    files = {
        "paired_train": paired["train"],
        "paired_test": paired["heldout"],
        "unpaired_train": unpaired,
    }
    paths = {}
    for name, rows in files.items():
        paths[name] = out / "data" / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps(r) + "\n" for r in rows))
    stats = {
        "train_prompts": len(train_prompts),
        "heldout_prompts": len(heldout),
        "paired_train_rows": len(paired["train"]),
        "paired_test_rows": len(paired["heldout"]),
        "unpaired_rows": len(unpaired),
        "unpaired_chosen": sum(r["label"] for r in unpaired),
        "reference_train_score_mean": statistics.fmean(x for g in train for x in g["scores"]),
    }
    (out / "data" / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    log.info("experiment data: %s", stats)
    return paths


# --- training ------------------------------------------------------------------------------------


def train_run(out: Path, method: str, seed: int, data: dict[str, Path], s: Settings) -> Path:
    """One LoRA run with the shared budget; reused when its metrics.json exists."""
    run_dir = out / "runs" / f"{method}-s{seed}"
    if (run_dir / "metrics.json").is_file():
        log.info("experiment: reusing %s", run_dir)
        return run_dir
    view = "unpaired_train" if method in UNPAIRED_METHODS else "paired_train"
    overrides = [
        "model=smollm2",
        f"loss={method}",
        "data=local",
        f"data.train_path={data[view]}",
        f"data.test_path={data['paired_test']}",
        f"output_dir={run_dir}",
        f"seed={seed}",
        f"train.max_steps={s.steps}",
        f"train.per_device_train_batch_size={s.batch}",
        f"train.learning_rate={s.learning_rate}",
        "train.warmup_steps=0.1",
        "train.lr_scheduler_type=cosine",
        f"train.max_length={s.max_length}",
        "train.max_prompt_length=48",
        f"train.save_steps={s.steps}",
        "train.logging_steps=5",
        "train.resume=never",
        *([] if method == "kto" else ["train.precompute_ref=true"]),
        *s.overrides,
    ]
    train(compose(*overrides))
    return run_dir


# --- evaluation ----------------------------------------------------------------------------------


@torch.no_grad()
def completion_logps(
    model, tokenizer, prompts: list[str], completions: list[str], batch: int = 16
) -> torch.Tensor:
    """Summed log-probs of each completion after its chat-formatted prompt (the training format)."""
    rows = [
        {
            "prompt": [{"role": "user", "content": p}],
            "completion": [{"role": "assistant", "content": c or " "}],
            "label": True,
        }
        for p, c in zip(prompts, completions)
    ]
    features, _ = tokenize_split(Split("eval", "experiment", "unpaired", rows), tokenizer, 512, 256)
    return row_logps(model, features, PreferenceCollator(tokenizer.pad_token_id), batch, "cpu")[:, 0].double()


def true_reward_metrics(policy: list[float], reference: list[float]) -> dict:
    """VADER mean and quantiles of a policy's samples, its FSD violation over the reference's and
    its win rate against the reference's sample for the same prompt and sample index."""
    p, r = torch.tensor(policy, dtype=torch.float64), torch.tensor(reference, dtype=torch.float64)
    wins = (p > r).double() + 0.5 * (p == r).double()  # same prompt, same sample index
    return {
        "mean": float(p.mean()),
        "quantiles": quantile_table(p, levels=(0.1, 0.25, 0.5, 0.75, 0.9)),
        "fsd_violation_vs_reference": fsd_violation(p, r),
        "win_rate_vs_reference": float(wins.mean()),
    }


def evaluate_policy(
    out: Path, name: str, base: str, adapter: str | None, prompts: list[str], s: Settings, ref
):
    """Held-out samples of one policy, their VADER scores and the KL estimate (cached)."""

    def build():
        model, tok = load_for_generation(base, adapter)
        texts = sample(model, tok, prompts, s.max_new_tokens, s.gen_batch, 7, f"eval {name}")
        kl = 0.0
        if (
            adapter is not None
        ):  # mean log-ratio of the policy's own samples: an estimate of KL(policy || ref)
            ref_model, _ = ref
            lp = completion_logps(model, tok, prompts, texts)
            lr = completion_logps(ref_model, tok, prompts, texts)
            kl = float((lp - lr).mean())
        score = vader()
        return {"texts": texts, "scores": [score(t) for t in texts], "kl": kl}

    return _cached_json(out / "eval" / f"{name}.json", build)


def run_experiment(out: Path, s: Settings) -> dict:
    """Every stage, then summary.json, table.md and the two plots under ``out``."""
    started = time.time()
    out.mkdir(parents=True, exist_ok=True)
    (out / "settings.json").write_text(json.dumps(asdict(s), indent=2) + "\n")
    base = str(ensure_smollm2())
    data = build_data(out, base, s)
    runs = {(m, seed): train_run(out, m, seed, data, s) for m in s.methods for seed in seeds_of(m, s)}
    _, heldout = make_prompts(s.train_prompts, s.heldout_prompts)
    prompts = [p for p in heldout for _ in range(s.samples_per_heldout_prompt)]
    ref = load_for_generation(base)
    reference = evaluate_policy(out, "reference", base, None, prompts, s, ref)
    rows = {
        "reference": {"seeds": [], **true_reward_metrics(reference["scores"], reference["scores"]), "kl": 0.0}
    }
    per_run = {}
    for (method, seed), run_dir in runs.items():
        ev = evaluate_policy(out, f"{method}-s{seed}", base, str(run_dir), prompts, s, ref)
        metrics = json.loads((run_dir / "metrics.json").read_text())
        per_run[f"{method}-s{seed}"] = {
            **true_reward_metrics(ev["scores"], reference["scores"]),
            "kl": ev["kl"],
            "implicit_reward_accuracy": metrics["eval_after"]["reward_accuracy"],
            "implicit_fsd_violation": metrics["eval_after"]["fsd_violation"],
        }
    summary = {"reference": rows["reference"], "methods": {}, "runs": per_run}
    for method in s.methods:
        seeds = [per_run[f"{method}-s{seed}"] for seed in seeds_of(method, s)]
        summary["methods"][method] = {
            key: dict(zip(("mean", "std"), mean_std([r[key] for r in seeds])), n=len(seeds))
            for key in ("mean", "fsd_violation_vs_reference", "win_rate_vs_reference", "kl",
                        "implicit_reward_accuracy", "implicit_fsd_violation")
        }  # fmt: skip
    # this invocation only: stages cached by an earlier start cost nothing here
    summary["invocation_seconds"] = round(time.time() - started, 1)
    summary["settings"] = asdict(s)
    summary["data"] = json.loads((out / "data" / "stats.json").read_text())
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "table.md").write_text(table(summary) + "\n")
    plot_true_quantiles(out / "true_reward_quantiles.png", reference["scores"], out, runs)
    plot_reward_vs_kl(out / "reward_vs_kl.png", summary)
    return summary
