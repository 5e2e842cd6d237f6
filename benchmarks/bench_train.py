"""Steps per second and peak memory: our trainer against stock TRL, same tiny model and data.

    make bench-train          # or: python benchmarks/bench_train.py [--steps 100] [--repeats 3]

Both sides train the tiny model's LoRA adapter with AOT unpaired (beta 0.01, logistic, hard
sort) on the sample set's paired rows: ours through ``aot.run.make_trainer``, TRL through
``trl.DPOTrainer(loss_type="aot_unpaired")``, with the same batch, steps, learning rate, LoRA
settings, sequence limit and reference (adapter disabled). Each measurement runs in a fresh
subprocess (peak RSS on CPU, peak allocated memory on CUDA), alternating the two sides, and the
median of the repeats is reported. Writes benchmarks/results/train.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BATCH = 16


def measure(side: str, steps: int) -> dict:
    import torch

    from aot.data import load_split
    from aot.run import build_training_args, compose, load_tokenizer, model_path, prepare

    out = tempfile.mkdtemp()
    cfg = compose(
        "model=tiny",
        "loss=aot_unpaired",
        "data=sample",
        f"output_dir={out}",
        f"train.max_steps={steps}",
        f"train.per_device_train_batch_size={BATCH}",
        "train.logging_steps=1000",
    )
    split = load_split(cfg.data, "train")
    if side == "ours":
        args = build_training_args(cfg, out)
        args.save_strategy = "no"
        trainer = prepare(cfg, args, split).trainer
    else:
        path = model_path(cfg)
        tokenizer = load_tokenizer(cfg, path)
        import datasets
        from peft import LoraConfig
        from transformers import AutoModelForCausalLM
        from trl import DPOConfig, DPOTrainer

        t, m = cfg.train, cfg.model
        args = DPOConfig(
            output_dir=out,
            seed=cfg.seed,
            max_steps=steps,
            per_device_train_batch_size=BATCH,
            learning_rate=t.learning_rate,
            lr_scheduler_type=t.lr_scheduler_type,
            warmup_steps=t.warmup_steps,
            logging_steps=1000,
            save_strategy="no",
            report_to=[],
            use_cpu=not torch.cuda.is_available(),
            bf16=False,
            gradient_checkpointing=False,
            loss_type=["aot_unpaired"],
            beta=cfg.loss.beta,
            max_length=t.max_length,
            disable_dropout=True,
        )
        rows = [{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]} for r in split.rows]
        lora = LoraConfig(
            r=m.lora_r,
            lora_alpha=m.lora_alpha,
            lora_dropout=m.lora_dropout,
            target_modules=list(m.lora_target_modules),
            task_type="CAUSAL_LM",
        )
        trainer = DPOTrainer(
            model=AutoModelForCausalLM.from_pretrained(path),
            args=args,
            processing_class=tokenizer,
            train_dataset=datasets.Dataset.from_list(rows),
            peft_config=lora,
        )
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    result = trainer.train()
    peak = (
        torch.cuda.max_memory_allocated()
        if torch.cuda.is_available()
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    )
    return {
        "steps_per_second": result.metrics["train_steps_per_second"],
        "peak_bytes": peak,
        "peak_kind": "cuda_max_allocated" if torch.cuda.is_available() else "cpu_max_rss",
        "final_loss": result.metrics["train_loss"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "train.json"))
    parser.add_argument("--child", choices=["ours", "trl"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(measure(args.child, args.steps)))
        return

    from aot.tiny import build_tiny

    build_tiny()  # outside the timed runs
    runs = {"ours": [], "trl": []}
    for _ in range(args.repeats):
        for side in runs:
            proc = subprocess.run(
                [sys.executable, __file__, "--child", side, "--steps", str(args.steps)],
                capture_output=True,
                text=True,
                cwd=REPO,
            )
            if proc.returncode != 0:
                sys.exit(f"{side} run failed:\n{proc.stderr[-4000:]}")
            line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
            runs[side].append(json.loads(line[7:]))
            print(side, runs[side][-1])
    summary = {
        side: {k: statistics.median(r[k] for r in rs) for k in ("steps_per_second", "peak_bytes")}
        for side, rs in runs.items()
    }
    summary["ratio_steps_per_second"] = (
        summary["ours"]["steps_per_second"] / summary["trl"]["steps_per_second"]
    )
    summary["ratio_peak_memory"] = summary["ours"]["peak_bytes"] / summary["trl"]["peak_bytes"]
    import torch
    from bench_loss import _cpu_name  # same folder

    result = {
        "machine": {
            "processor": _cpu_name(),
            "torch": torch.__version__,
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        },
        "steps": args.steps,
        "per_device_batch": BATCH,
        "runs": runs,
        "summary": summary,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
