"""Peak memory and time of one training step at real vocabulary size: chunked log-probs, the old
full-vocabulary logits, and TRL.

    make bench-memory         # or: python benchmarks/bench_memory.py [--rounds 3] [--lengths 256 512 1024]

SmolLM2-135M-Instruct (vocabulary 49,152, tied embeddings; ``make smollm2``), LoRA, gradient
checkpointing (as 7B runs train, and TRL's default; without it the layers' activations, not the
logits, dominate at this model size), AOT unpaired, one step of 4 pairs (8 sequences) at max_length 256, 512 and 1,024: prompts of a quarter of the
length, chosen answers filling it, rejected answers an eighth shorter, random token ids (memory
and time do not depend on which tokens). Three cases on the same token rows:

- ``chunked``: our trainer, log-probs through the head only at completion positions, in chunks
  (``train.logps_chunk=1024``, the default);
- ``full_logits``: our trainer with ``train.logps_chunk=0``, the (S, L, V) logits path it used before;
- ``trl``: TRL 1.16 ``DPOTrainer(loss_type="aot_unpaired")`` (on a CPU its chunked log-prob
  head scores every position, prompt included; on CUDA a Triton kernel scores completion tokens).

Each measurement is a fresh process running one step (the reference pass included; a step
takes 20-150 s here, so one-time costs are small), with glibc returning freed blocks at once
(``LIVE_MEMORY``) so that the peak follows live tensors. The peak is the resident high-water
mark during the step (CUDA: peak allocated), also reported above the resident memory just
before it (weights, data and libraries excluded). Cases alternate within each round; medians
over rounds. Cases alternate within each round; medians over rounds.
Then, from the measured bytes per token, the largest per-GPU OT batch for Mistral-7B and
Llama-3-8B on 80 GB before and after (see ``estimate``). Writes benchmarks/results/memory.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import LIVE_MEMORY, alternate, child, machine, medians, step_clock, trl_aot_trainer, write  # noqa: E402

PAIRS = 4
CASES = ("chunked", "full_logits", "trl")
#: the paper's per-GPU cap (pairs) that memory imposed on its runs
PAPER_PAIRS = 35
#: (layers, hidden size, vocabulary, parameters) of the 7B-class models the recipes train
MODELS = {"Mistral-7B": (32, 4096, 32_000, 7.24e9), "Llama-3-8B": (32, 4096, 128_256, 8.03e9)}
SMOLLM2 = {"layers": 30, "hidden": 576, "vocab": 49_152}


def token_rows(length: int, vocab: int, pairs: int = PAIRS) -> list[dict]:
    import torch

    g = torch.Generator().manual_seed(length)
    prompt, chosen = length // 4, length - length // 4
    rejected = chosen - length // 8

    def ids(n):
        return torch.randint(100, vocab - 100, (n,), generator=g).tolist()

    return [
        {"prompt_ids": ids(prompt), "chosen_ids": ids(chosen), "rejected_ids": ids(rejected)}
        for _ in range(pairs)
    ]


def measure(case: str, length: int) -> dict:
    import torch

    from aot.arguments import build_training_args
    from aot.build import make_trainer
    from aot.config import compose
    from aot.models import load_models, load_tokenizer, model_path

    out = tempfile.mkdtemp()
    cfg = compose(
        "model=smollm2",
        "loss=aot_unpaired",
        f"output_dir={out}",
        "train.max_steps=1",
        f"train.per_device_train_batch_size={PAIRS}",
        f"train.max_length={length}",
        f"train.max_prompt_length={length // 4 + 1}",
        f"train.logps_chunk={0 if case == 'full_logits' else 1024}",
        "train.logging_steps=100000",
        "train.gradient_checkpointing=true",
    )
    path = model_path(cfg)
    tokenizer = load_tokenizer(cfg, path)
    rows = token_rows(length, len(tokenizer))
    if case == "trl":
        trainer = trl_aot_trainer(cfg, path, tokenizer, rows, out, steps=1)
    else:
        args = build_training_args(cfg, out)
        args.save_strategy = "no"
        policy, reference = load_models(cfg, path)
        trainer = make_trainer(cfg, args, policy, reference, tokenizer, None, rows)
    with torch.no_grad():  # page the weights in (loading maps them lazily): not the step's memory
        sum(float(p.sum()) for p in trainer.model.parameters())
    clock = step_clock()
    trainer.add_callback(clock)
    trainer.train()
    peak = max(clock.peaks)
    return {
        "seconds": clock.seconds[-1],
        "peak_bytes": peak,
        "peak_above_start_bytes": peak - clock.before[0],
        "tokens": sum(
            len(r["prompt_ids"]) * 2 + len(r["chosen_ids"]) + len(r["rejected_ids"]) for r in rows[:PAIRS]
        ),
    }


def estimate(rows: list[dict]) -> dict:
    """The largest per-GPU OT batch (pairs) for the 7B recipes on 80 GB, before and after.

    Measured on SmolLM2 at the longest length (float32, gradient checkpointing): the step's peak above
    its start per token, for the full-logits path and the chunked one. Their difference per
    token per vocabulary entry is what the logits cost (bytes); it is carried over to a 7B model
    in proportion to its vocabulary. The chunked path's cost per token is carried over in
    proportion to layers x hidden size (each layer's checkpointed input, and one layer's
    recomputed activations) and halved for bf16. Weights in bf16; 2 GB for LoRA states, optimizer
    and workspace; every token of both sequences of a pair counted (prompt included).
    """
    longest = max(r["length"] for r in rows)
    per = {r["case"]: r["peak_above_start_bytes"] / r["tokens"] for r in rows if r["length"] == longest}
    logits_per_vocab = (per["full_logits"] - per["chunked"]) / SMOLLM2["vocab"]
    body_per_unit = per["chunked"] / (SMOLLM2["layers"] * SMOLLM2["hidden"])  # float32
    out = {
        "measured_at_length": longest,
        "logits_bytes_per_token_per_vocab_entry": logits_per_vocab,
        "chunked_bytes_per_token_per_layer_x_hidden": body_per_unit,
        "paper_pairs_per_gpu": PAPER_PAIRS,
        "models": {},
    }
    for name, (layers, hidden, vocab, params) in MODELS.items():
        free = 80e9 - 2 * params - 2e9
        body = body_per_unit * layers * hidden / 2  # bf16
        chunk_transient = 1024 * vocab * 4 * 3  # one chunk's logits, softmax and gradient (float32)
        per_model = {}
        for tokens in (1024, 2048):
            before = free // (2 * tokens * (body + logits_per_vocab * vocab))
            after = (free - chunk_transient) // (2 * tokens * body)
            per_model[str(tokens)] = {"pairs_before": int(before), "pairs_after": int(after)}
        out["models"][name] = per_model
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument("--out")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        import json

        print("RESULT " + json.dumps(measure(args.child[0], int(args.child[1]))))
        return

    from aot.fixtures import ensure_smollm2

    ensure_smollm2()  # outside the measured runs
    rows = []
    for length in args.lengths:
        runs = alternate(
            {c: c for c in CASES}, args.rounds, lambda c: child(__file__, [c, str(length)], env=LIVE_MEMORY)
        )
        for case, rs in runs.items():
            row = {"case": case, "length": length, "rounds": len(rs), "runs": rs}
            row.update(medians(rs, ("seconds", "peak_bytes", "peak_above_start_bytes", "tokens")))
            rows.append(row)
        trl = next(r for r in rows if r["case"] == "trl" and r["length"] == length)
        for r in rows:
            if r["length"] == length:
                r["peak_vs_trl"] = r["peak_bytes"] / trl["peak_bytes"]
                r["time_vs_trl"] = r["seconds"] / trl["seconds"]
    longest = max(args.lengths)
    ours = next(r for r in rows if r["case"] == "chunked" and r["length"] == longest)
    targets = {
        f"peak_at_{longest}_vs_trl <= 0.5": {"value": ours["peak_vs_trl"], "met": ours["peak_vs_trl"] <= 0.5},
        f"time_at_{longest}_vs_trl <= 1.1": {"value": ours["time_vs_trl"], "met": ours["time_vs_trl"] <= 1.1},
    }
    result = {
        "machine": machine(),
        "model": "SmolLM2-135M-Instruct (float32, LoRA r16 on all linear layers, gradient checkpointing)",
        "pairs": PAIRS,
        "rows": rows,
        "targets": targets,
        "estimate_80GB": estimate(rows),
    }
    write("memory.json", result, args.out)
    print(
        f"{'case':<12} {'length':>6} {'s/step':>8} {'peak GB':>8} {'above GB':>9} {'x TRL mem':>9} {'x TRL time':>10}"
    )
    for r in rows:
        print(
            f"{r['case']:<12} {r['length']:>6} {r['seconds']:>8.2f} {r['peak_bytes'] / 1e9:>8.2f} "
            f"{r['peak_above_start_bytes'] / 1e9:>9.2f} {r['peak_vs_trl']:>9.2f} {r['time_vs_trl']:>10.2f}"
        )
    print(targets)


if __name__ == "__main__":
    main()
