"""The paper's distributional claim on a real model, measured against a ground-truth reward.

Controlled sentiment generation with SmolLM2-135M-Instruct as the reference policy and VADER's
compound score (in [-1, 1], a lexicon nobody here wrote) as the true reward:

1. prompts: short requests for an opinion, review or description, from templates x topics with a
   fixed seed; the held-out prompts use templates *and* topics never seen in training;
2. data: two sampled completions per prompt from the reference (temperature 1), scored by VADER;
   paired view: chosen = the higher score; unpaired view: one completion per prompt, chosen when
   above the median score (the paper's HelpSteer rule), so chosen and rejected rows come from
   different prompts in unequal numbers;
3. training: AOT unpaired, AOT paired, DPO, IPO and KTO with one budget for all (LoRA);
4. evaluation on held-out prompts, for each policy and the reference: sampled completions scored
   by VADER (mean, quantiles), the FSD violation of the policy's true-reward distribution over
   the reference's, the win rate against the reference on the same prompts, a KL estimate (the
   mean log-ratio of the policy's own samples), and the run's implicit-reward diagnostics.

Every stage is cached under the output directory (generations, scores, finished runs,
evaluations), so an interrupted experiment rerun picks up where it stopped.

    python scripts/experiment.py [--quick] [--out results/experiment]
"""

from __future__ import annotations

import json
import logging
import random
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

log = logging.getLogger("aot")

TRAIN_TEMPLATES = [
    "Write a short review of {t}.",
    "Describe {t} in two sentences.",
    "What do you think of {t}?",
    "Give your honest opinion of {t}.",
    "Tell me about your last experience with {t}.",
    "Write a one-paragraph description of {t}.",
]
HELDOUT_TEMPLATES = [
    "Share a brief impression of {t}.",
    "How would you describe {t} to a friend?",
]
TRAIN_TOPICS = [
    "a small coffee shop",
    "a rainy Monday",
    "a new smartphone",
    "a city bus ride",
    "a public library",
    "a family dinner",
    "a hotel room",
    "a morning jog",
    "a pizza place",
    "a history museum",
    "a long flight",
    "a summer festival",
    "an old bookstore",
    "a budget laptop",
    "a mountain hike",
    "a crowded supermarket",
    "a cooking class",
    "a jazz concert",
    "a beach holiday",
    "a dentist visit",
    "a science fiction film",
    "a rock band",
    "a city park",
    "a train station",
    "a used car",
    "a yoga class",
    "a farmers market",
    "a winter morning",
    "a video game",
    "a school cafeteria",
    "a football match",
    "a garden center",
]
HELDOUT_TOPICS = [
    "a street market",
    "a ferry trip",
    "a bakery",
    "an art gallery",
    "a camping weekend",
    "a bike repair shop",
    "a night train",
    "a board game evening",
]
METHODS = ("aot_unpaired", "dpo", "aot_paired", "ipo", "kto")
UNPAIRED_METHODS = ("aot_unpaired", "kto")


@dataclass
class Settings:
    """Sizes of one experiment; ``full`` for the README run, ``quick`` for the test suite."""

    train_prompts: int = 192
    heldout_prompts: int = 16
    samples_per_heldout_prompt: int = 4
    max_new_tokens: int = 40
    seeds: tuple = (1, 2)
    # On 2 CPU cores the hour allows 7 runs: two seeds for the comparison the paper makes
    # (AOT unpaired against DPO), one for the others.
    one_seed: tuple = ("aot_paired", "ipo", "kto")
    steps: int = 30
    batch: int = 8
    learning_rate: float = 2e-4
    max_length: int = 96
    gen_batch: int = 32
    methods: tuple = METHODS
    # beta 0.1 for every method (the TRL default for DPO, IPO and KTO): the implicit rewards then
    # have one scale in every loss, so one learning rate serves all. The AOT recipes' 0.01 (the
    # paper's, for 7B models) would scale AOT's gradients down tenfold under the same budget.
    overrides: list = field(default_factory=lambda: ["loss.beta=0.1"])

    @classmethod
    def quick(cls) -> Settings:
        return cls(
            train_prompts=12, heldout_prompts=4, samples_per_heldout_prompt=2, max_new_tokens=10, seeds=(1,),
            steps=2, batch=4, max_length=64, gen_batch=16, one_seed=METHODS,
        )  # fmt: skip


# --- prompts and data ----------------------------------------------------------------------------


def make_prompts(n_train: int, n_heldout: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """Train and held-out prompts, disjoint in both template and topic."""
    rng = random.Random(seed)
    train = [t.format(t=topic) for t in TRAIN_TEMPLATES for topic in TRAIN_TOPICS]
    heldout = [t.format(t=topic) for t in HELDOUT_TEMPLATES for topic in HELDOUT_TOPICS]
    rng.shuffle(train)
    rng.shuffle(heldout)
    if n_train > len(train) or n_heldout > len(heldout):
        raise ValueError(f"at most {len(train)} train and {len(heldout)} held-out prompts")
    return train[:n_train], heldout[:n_heldout]


def vader():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    analyzer = SentimentIntensityAnalyzer()
    return lambda text: analyzer.polarity_scores(text)["compound"]


def load_policy(base: str, adapter: str | None = None):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.padding_side = "left"
    return model.eval(), tokenizer


@torch.no_grad()
def sample(
    model, tokenizer, prompts: list[str], max_new_tokens: int, batch: int, seed: int, desc: str
) -> list[str]:
    """One completion per prompt, temperature 1 (full softmax: no top-k/top-p), chat template."""
    from tqdm import tqdm

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
    if path.is_file():
        return json.loads(path.read_text())
    value = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value, indent=1) + "\n")
    tmp.rename(path)
    return value


def build_data(out: Path, base: str, s: Settings) -> dict[str, Path]:
    """Generations from the reference, VADER scores, and the paired / unpaired training files."""
    train_prompts, heldout = make_prompts(s.train_prompts, s.heldout_prompts)
    from aot.data import binarise_by_median

    score = vader()

    def generate():
        model, tok = load_policy(base)
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
    from tqdm import tqdm

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
    from aot.config import compose
    from aot.run import train

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
    from aot.data import Split
    from aot.trainer import PreferenceCollator, row_logps, tokenize_split

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
    from aot.losses import fsd_violation

    p, r = torch.tensor(policy, dtype=torch.float64), torch.tensor(reference, dtype=torch.float64)
    qs = (0.1, 0.25, 0.5, 0.75, 0.9)
    wins = (p > r).double() + 0.5 * (p == r).double()  # same prompt, same sample index
    return {
        "mean": float(p.mean()),
        "quantiles": {f"q{int(q * 100):02d}": float(torch.quantile(p, q)) for q in qs},
        "fsd_violation_vs_reference": fsd_violation(p, r),
        "win_rate_vs_reference": float(wins.mean()),
    }


def evaluate_policy(
    out: Path, name: str, base: str, adapter: str | None, prompts: list[str], s: Settings, ref
):
    """Held-out samples of one policy, their VADER scores and the KL estimate (cached)."""

    def build():
        model, tok = load_policy(base, adapter)
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
    from aot.smollm2 import ensure_smollm2

    started = time.time()
    out.mkdir(parents=True, exist_ok=True)
    (out / "settings.json").write_text(json.dumps(asdict(s), indent=2) + "\n")
    base = str(ensure_smollm2())
    data = build_data(out, base, s)
    runs = {(m, seed): train_run(out, m, seed, data, s) for m in s.methods for seed in seeds_of(m, s)}
    _, heldout = make_prompts(s.train_prompts, s.heldout_prompts)
    prompts = [p for p in heldout for _ in range(s.samples_per_heldout_prompt)]
    ref = load_policy(base)
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
            key: _mean_std([r[key] for r in seeds])
            for key in ("mean", "fsd_violation_vs_reference", "win_rate_vs_reference", "kl",
                        "implicit_reward_accuracy", "implicit_fsd_violation")
        }  # fmt: skip
    summary["wall_seconds"] = round(time.time() - started, 1)
    summary["settings"] = asdict(s)
    summary["data"] = json.loads((out / "data" / "stats.json").read_text())
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "table.md").write_text(table(summary) + "\n")
    plot_true_quantiles(out / "true_reward_quantiles.png", reference["scores"], out, runs)
    plot_reward_vs_kl(out / "reward_vs_kl.png", summary)
    return summary


def seeds_of(method: str, s: Settings) -> tuple:
    return s.seeds[:1] if method in s.one_seed else s.seeds


def _mean_std(values: list[float]) -> dict:
    std = statistics.stdev(values) if len(values) > 1 else None
    return {"mean": statistics.fmean(values), "std": std, "n": len(values)}


def table(summary: dict) -> str:
    ref = summary["reference"]
    head = (
        "| policy | seeds | VADER mean | FSD violation vs ref | win rate vs ref | KL est. | implicit reward acc. | implicit FSD viol. |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|\n"
        f"| reference (SmolLM2) | - | {ref['mean']:.3f} | - | - | 0 | - | - |\n"
    )

    def cell(d):
        return f"{d['mean']:.3f}" if d["std"] is None else f"{d['mean']:.3f} ± {d['std']:.3f}"

    rows = "".join(
        f"| {m} | {d['mean']['n']} | {cell(d['mean'])} | {cell(d['fsd_violation_vs_reference'])} | {cell(d['win_rate_vs_reference'])} | "
        f"{cell(d['kl'])} | {cell(d['implicit_reward_accuracy'])} | {cell(d['implicit_fsd_violation'])} |\n"
        for m, d in summary["methods"].items()
    )
    return head + rows.rstrip("\n")


def plot_true_quantiles(path: Path, reference: list[float], out: Path, runs: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = torch.linspace(0.02, 0.98, 49, dtype=torch.float64)
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ax.plot(
        levels, torch.quantile(torch.tensor(reference, dtype=torch.float64), levels), "k--", label="reference"
    )
    methods = sorted({m for m, _ in runs})
    for method in methods:
        scores = [
            x
            for (m, seed) in runs
            if m == method
            for x in json.loads((out / "eval" / f"{m}-s{seed}.json").read_text())["scores"]
        ]
        ax.plot(levels, torch.quantile(torch.tensor(scores, dtype=torch.float64), levels), label=method)
    ax.set_xlabel("quantile level")
    ax.set_ylabel("VADER compound (true reward)")
    ax.set_title("True-reward quantiles on held-out prompts (seeds pooled)")
    _save(fig, ax, path)


def _save(fig, ax, path: Path) -> None:
    import matplotlib.pyplot as plt

    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_reward_vs_kl(path: Path, summary: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.0))
    ax.scatter([0.0], [summary["reference"]["mean"]], c="k", marker="x", label="reference")
    seen = set()
    for name, r in summary["runs"].items():
        method = name.rsplit("-s", 1)[0]
        color = f"C{list(summary['methods']).index(method)}"
        ax.scatter([r["kl"]], [r["mean"]], c=color, label=None if method in seen else method)
        seen.add(method)
    ax.set_xlabel("KL estimate to the reference (nats / sequence)")
    ax.set_ylabel("VADER mean on held-out prompts")
    _save(fig, ax, path)
