"""Steps per second and peak memory: our trainer against stock TRL on the same token rows.

    make bench-train          # or: python benchmarks/bench_train.py [--rounds 3] [--models tiny smollm2]

Both sides train a LoRA adapter with AOT unpaired (beta 0.01, logistic, hard sort) on the sample
set's paired rows, tokenised once by our tokeniser (chat template, truncation) and fed to both:
ours through ``aot.build.make_trainer``, TRL through ``trl.DPOTrainer(loss_type="aot_unpaired")``
(its collator, forward and loss; ``common.trl_aot_trainer``), with the same batch, learning
rate, LoRA settings, sequence limit and reference (adapter disabled), no bf16 and no gradient
checkpointing. Models: the tiny one (batch 16) and SmolLM2-135M-Instruct (its recipe: batch 8,
max_length 128, vocabulary 49,152). Each measurement is a fresh process; the first step is a
warm-up; steps per second = 1 / median step time of the rest; the peak is the resident
high-water mark over all steps (CUDA: peak allocated), with glibc returning freed blocks at once
(``common.LIVE_MEMORY``) on both sides, also reported above the resident memory before the first
step. The two sides alternate; medians over rounds. Writes benchmarks/results/train.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import (  # noqa: E402
    LIVE_MEMORY,
    alternate,
    child,
    machine,
    medians,
    step_clock,
    trl_aot_trainer,
    write,
)

#: model -> (per-device batch, steps per measurement incl. the warm-up)
MODELS = {"tiny": (16, 40), "smollm2": (8, 6)}
TARGETS = {"steps_per_second_vs_trl >= 1.2": 1.2, "peak_memory_vs_trl <= 0.6": 0.6}


def measure(side: str, model: str) -> dict:
    import torch

    from aot.arguments import build_training_args
    from aot.batches import tokenize_split
    from aot.build import make_trainer
    from aot.config import compose
    from aot.data import load_split
    from aot.models import load_models, load_tokenizer, model_path

    batch, steps = MODELS[model]
    out = tempfile.mkdtemp()
    cfg = compose(
        f"model={model}",
        "loss=aot_unpaired",
        "data=sample",
        f"output_dir={out}",
        f"train.max_steps={steps}",
        f"train.per_device_train_batch_size={batch}",
        "train.logging_steps=100000",
    )
    path = model_path(cfg)
    tokenizer = load_tokenizer(cfg, path)
    split = load_split(cfg.data, "train")
    features, _ = tokenize_split(split, tokenizer, cfg.train.max_length, cfg.train.max_prompt_length)
    if side == "trl":
        rows = [{k: f[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")} for f in features]
        trainer = trl_aot_trainer(cfg, path, tokenizer, rows, out, steps)
    else:
        args = build_training_args(cfg, out)
        args.save_strategy = "no"
        policy, reference = load_models(cfg, path)
        trainer = make_trainer(cfg, args, policy, reference, tokenizer, split, features)
    with torch.no_grad():  # page the weights in (loading maps them lazily): not the steps' memory
        sum(float(p.sum()) for p in trainer.model.parameters())
    clock = step_clock()
    trainer.add_callback(clock)
    trainer.train()
    return {
        "steps_per_second": 1 / statistics.median(clock.seconds[1:]),
        "peak_bytes": max(clock.peaks),
        "peak_above_start_bytes": max(clock.peaks) - clock.before[0],
        "timed_steps": len(clock.seconds) - 1,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--out")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(measure(*args.child)))
        return

    from aot.fixtures import build_tiny, ensure_smollm2

    build_tiny(), ensure_smollm2()  # outside the measured runs
    models = {}
    for model in args.models:
        runs = alternate(
            {"ours": "ours", "trl": "trl"},
            args.rounds,
            lambda side: child(__file__, [side, model], env=LIVE_MEMORY),
        )
        keys = ("steps_per_second", "peak_bytes", "peak_above_start_bytes")
        summary = {side: medians(rs, keys) for side, rs in runs.items()}
        ours, trl = summary["ours"], summary["trl"]
        ratios = {
            "steps_per_second_vs_trl >= 1.2": ours["steps_per_second"] / trl["steps_per_second"],
            "peak_memory_vs_trl <= 0.6": ours["peak_bytes"] / trl["peak_bytes"],
        }
        targets = {
            name: {"value": value, "met": value >= TARGETS[name] if ">=" in name else value <= TARGETS[name]}
            for name, value in ratios.items()
        }
        batch, steps = MODELS[model]
        models[model] = {
            "per_device_batch": batch,
            "steps": steps,
            "runs": runs,
            "summary": summary,
            "targets": targets,
            # the peak above the resident memory before the first step (weights, libraries excluded)
            "step_memory_vs_trl": ours["peak_above_start_bytes"] / trl["peak_above_start_bytes"],
        }
        print(model, json.dumps(summary), json.dumps(targets))
    write("train.json", {"machine": machine(), "rounds": args.rounds, "models": models}, args.out)


if __name__ == "__main__":
    main()
