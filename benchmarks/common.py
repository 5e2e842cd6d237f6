"""What the benchmarks share: the machine they ran on, one fresh process per measurement,
rounds that alternate the compared cases, medians, peak memory, and TRL's trainer on our rows.

Every ratio a benchmark reports is measured side by side in one run: the cases alternate within
each round (the order rotating between rounds) so that a machine that slows down, or another
process that wakes up, hits every case alike; the median over rounds is reported.
"""

from __future__ import annotations

import json
import os
import platform
import re
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def machine() -> dict:
    """CPU model, cores usable by this process, torch version and threads, accelerator."""
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "platform": platform.platform(),
        "processor": cpu_name(),
        "cores": cores,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
    }


# --- peak memory -----------------------------------------------------------------------------------

#: glibc: allocations over 64 KiB by mmap, returned to the OS when freed, so that the resident
#: peak follows the peak of live tensors (by default freed blocks stay resident and the heap
#: fragments: a second identical step then "peaks" gigabytes higher). Every compared case runs
#: with it, so it slows them alike.
LIVE_MEMORY = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_ARENA_MAX": "2"}


def rss_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak() -> None:
    """Start a new peak: CUDA's allocator counter, or Linux's resident high-water mark (VmHWM)."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS


def peak_bytes() -> tuple[int, str]:
    """The peak since ``reset_peak`` and what kind of peak it is."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated(), "cuda_max_allocated"
    hwm = re.search(r"VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text())
    return int(hwm.group(1)) * 1024, "cpu_peak_rss"


# --- child processes, rounds, medians --------------------------------------------------------------


def child(script: str, args: list[str], env: dict | None = None) -> dict:
    """Run ``script --child ARGS`` in a fresh interpreter; its ``RESULT {json}`` line."""
    proc = subprocess.run(
        [sys.executable, script, "--child", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, **(env or {})},
    )
    if proc.returncode != 0:
        sys.exit(f"{Path(script).name} {' '.join(args)} failed:\n{proc.stderr[-4000:]}")
    return json.loads(next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))[7:])


def alternate(cases: dict, rounds: int, run) -> dict:
    """``run(case)`` for every case, ``rounds`` times, alternating; the order rotates each round."""
    names = list(cases)
    results = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            results[name].append(run(cases[name]))
            print(name, json.dumps(results[name][-1]), flush=True)
    return results


def medians(runs: list[dict], keys) -> dict:
    return {k: statistics.median(r[k] for r in runs) for k in keys}


def write(name: str, result: dict, out: str | None = None) -> Path:
    path = Path(out) if out else RESULTS / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")
    return path


# --- UltraFeedback lengths ---------------------------------------------------------------------------

#: The length model of UltraFeedback-binarized pairs (tokens, Llama/Mistral tokenizers): log-normal
#: prompt, chosen and rejected lengths with these means and sigma 0.8, prompts cut to 512 and each
#: sequence to 1,024 (the 7B recipes' max_prompt_length and max_length). At 16 pairs a micro-batch
#: padded to its longest sequence is about 55% padding (docs/benchmarks.md).
UF_MEANS = {"prompt": 150, "chosen": 370, "rejected": 300}
UF_SIGMA, UF_MAX_PROMPT, UF_MAX_LENGTH = 0.8, 512, 1024


def ultrafeedback_rows(pairs: int, vocab: int, seed: int = 0) -> list[dict]:
    """``pairs`` token rows (prompt_ids/chosen_ids/rejected_ids) with UltraFeedback's lengths
    (``UF_MEANS``) and random token ids in [100, vocab - 100)."""
    import math
    import random

    rng = random.Random(seed)

    def length(mean: float, cap: int) -> int:  # a log-normal with this mean: mu = log(mean) - sigma^2/2
        return max(1, min(cap, round(rng.lognormvariate(math.log(mean) - UF_SIGMA**2 / 2, UF_SIGMA))))

    def ids(n: int) -> list[int]:
        return [rng.randrange(100, vocab - 100) for _ in range(n)]

    rows = []
    for _ in range(pairs):
        prompt = length(UF_MEANS["prompt"], UF_MAX_PROMPT)
        room = UF_MAX_LENGTH - prompt
        chosen, rejected = length(UF_MEANS["chosen"], room), length(UF_MEANS["rejected"], room)
        rows.append({"prompt_ids": ids(prompt), "chosen_ids": ids(chosen), "rejected_ids": ids(rejected)})
    return rows


# --- TRL on our rows -------------------------------------------------------------------------------


def trl_aot_trainer(
    cfg, model_path, tokenizer, rows: list[dict], out: str, steps: int, model=None, bf16=False
):
    """TRL 1.16 ``DPOTrainer(loss_type="aot_unpaired")`` with the run's LoRA, batch, learning rate
    and sequence limit and the run's gradient checkpointing; bf16 as asked (off on a CPU, as ours).
    ``model``: a model object to train instead of loading ``model_path``. ``rows`` are either text (prompt/chosen/rejected) or our token rows
    (prompt_ids/chosen_ids/rejected_ids): TRL's own collator, forward and loss consume the
    latter unchanged; only its text tokenisation is skipped so that both trainers see the same
    tokens."""
    import datasets
    import torch
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    from aot.models import lora_config

    class TokenRowsDPOTrainer(DPOTrainer):
        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            if "prompt_ids" in dataset.column_names:
                return dataset
            return super()._prepare_dataset(dataset, processing_class, args, dataset_name)

    t, m = cfg.train, cfg.model
    args = DPOConfig(
        output_dir=out,
        seed=cfg.seed,
        max_steps=steps,
        per_device_train_batch_size=t.per_device_train_batch_size,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler_type,
        warmup_steps=t.warmup_steps,
        logging_steps=100000,
        save_strategy="no",
        report_to=[],
        use_cpu=not torch.cuda.is_available(),
        bf16=bf16,
        gradient_checkpointing=bool(t.gradient_checkpointing),
        loss_type=["aot_unpaired"],
        beta=cfg.loss.beta,
        max_length=t.max_length,
        disable_dropout=True,
    )
    lora = lora_config(cfg)
    return TokenRowsDPOTrainer(
        model=model
        if model is not None
        else AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, m.dtype)),
        args=args,
        processing_class=tokenizer,
        train_dataset=datasets.Dataset.from_list(rows),
        peft_config=lora,
    )


def step_clock():
    """A TrainerCallback that times each optimizer step and records the peak memory within it
    (the peak is reset as each step starts: loading and set-up do not count) and the resident
    memory just before it."""
    import time

    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self):
            self.seconds, self.peaks, self.before = [], [], []

        def on_step_begin(self, *args, **kwargs):
            self.before.append(rss_bytes())
            reset_peak()
            self.t0 = time.perf_counter()

        def on_step_end(self, *args, **kwargs):
            self.seconds.append(time.perf_counter() - self.t0)
            self.peaks.append(peak_bytes()[0])

    return StepClock()
