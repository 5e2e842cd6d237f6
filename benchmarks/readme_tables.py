"""Rewrite the benchmark tables of the docs from benchmarks/results/*.json (run after a benchmark).

    python benchmarks/readme_tables.py [loss train scale memory sharded generation packing gpu]   # default: every table

Each table sits between ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->`` in README.md or in
one of docs/*.md (``document``).
"""

import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def machine_line(m: dict) -> str:
    if "cores" not in m:  # results written before benchmarks/common.py recorded the machine in full
        return f"Machine: {m.get('processor') or m.get('platform')}, torch {m['torch']}, {m.get('device', 'cpu')}."
    return (
        f"Machine: {m['processor']}, {m['cores']} cores, torch {m['torch']} ({m['torch_threads']} threads), "
        f"{m['device']}."
    )


def met(target: dict) -> str:
    return f"{target['value']:.2f} ({'met' if target['met'] else 'NOT met'})"


def loss_table(d: dict) -> str:
    rows = "\n".join(
        f"| {r['case']} | {r['n']} | {r['ms']:.3f} | {r['vs_trl_inline']:.2f} | {r['ns_per_nlogn']:.1f} |"
        for r in d["rows"]
    )
    return (
        machine_line(d["machine"])
        + (f" Sinkhorn refuses n > {d['sinkhorn_max_n']}." if "sinkhorn_max_n" in d else "")
        + "\n\n"
        + "| case | n | ms | x trl | ns / (n log2 n) |\n|---|---:|---:|---:|---:|\n"
        + rows
    )


def train_table(d: dict) -> str:
    lines = [
        machine_line(d["machine"]) + f" Medians of {d['rounds']} alternating rounds.\n",
        "| model | batch | steps / s, ours | steps / s, TRL | peak GB, ours | peak GB, TRL "
        "| speed x TRL (>= 1.2) | peak x TRL (<= 0.6) | above start x TRL |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, m in d["models"].items():
        s, t = m["summary"], list(m["targets"].values())
        lines.append(
            f"| {name} | {m['per_device_batch']} | {s['ours']['steps_per_second']:.3f} | "
            f"{s['trl']['steps_per_second']:.3f} | {s['ours']['peak_bytes'] / 1e9:.2f} | "
            f"{s['trl']['peak_bytes'] / 1e9:.2f} | {met(t[0])} | {met(t[1])} | {m['step_memory_vs_trl']:.2f} |"
        )
    return "\n".join(lines)


def memory_table(d: dict) -> str:
    lines = [
        machine_line(d["machine"]) + f" {d['model']}, {d['pairs']} pairs, medians of "
        f"{d['rows'][0]['rounds']} alternating rounds.\n",
        "| path | max_length | s / step | peak GB | above start GB | peak x TRL | time x TRL |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in d["rows"]:
        lines.append(
            f"| {r['case']} | {r['length']} | {r['seconds']:.1f} | {r['peak_bytes'] / 1e9:.2f} | "
            f"{r['peak_above_start_bytes'] / 1e9:.2f} | {r['peak_vs_trl']:.2f} | {r['time_vs_trl']:.2f} |"
        )
    lines.append("")
    lines += [f"Target {name}: {met(t)}." for name, t in d["targets"].items()]
    e = d["estimate_80GB"]
    lines += [
        "",
        f"Largest per-GPU OT batch on 80 GB (pairs; LoRA, bf16, gradient checkpointing; estimated from the "
        f"bytes per token measured at {e['measured_at_length']} tokens: logits "
        f"{e['logits_bytes_per_token_per_vocab_entry']:.1f} B per token per vocabulary entry). The paper: "
        f"{e['paper_pairs_per_gpu']} pairs.\n",
        "| model | tokens | full logits | chunked | x |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, per in e["models"].items():
        for tokens, p in per.items():
            ratio = p["pairs_after"] / max(p["pairs_before"], 1)
            lines.append(f"| {name} | {tokens} | {p['pairs_before']} | {p['pairs_after']} | {ratio:.1f} |")
    return "\n".join(lines)


def scale_table(d: dict) -> str:
    rows = "\n".join(
        f"| {r['mode']} | {r['ot_batch']} | {r['micro_batch']} | {r['ms_per_sample']:.2f} | "
        f"{r['time_vs_plain_same_size']:.2f} | {r['peak_mb']:.0f} | {r['peak_vs_micro']:.2f} |"
        for r in d["rows"]
    )
    pre = "\n".join(
        f"| {batch} | {p['ms_per_step_live_ref']:.1f} | {p['ms_per_step_precomputed']:.1f} | {p['speedup']:.2f} |"
        for batch, p in d["precompute"].items()
    )
    real = d.get("smollm2")
    real_line = (
        f"\n\nSmolLM2-135M: the two-pass step over {real['ot_batch']} rows in micro-batches of "
        f"{real['micro_batch']}: {real['summary']['two_pass']['ms_per_sample']:.0f} ms per sample against "
        f"{real['summary']['plain']['ms_per_sample']:.0f} for a plain batch of {real['ot_batch']} "
        f"(median of {real['rounds']} alternating rounds; {machine_line(real['machine'])[9:-1]}): "
        f"{met(real['target']['two_pass_time_vs_plain <= 1.5'])} against the 1.5x target."
        if real
        else ""
    )
    return (
        machine_line(d["machine"]) + f" Memory: {d['rows'][0]['peak_kind']}.\n\n"
        "| step | OT batch | micro-batch | ms / sample | x plain same size | peak MB | x micro-batch run |\n"
        "|---|---:|---:|---:|---:|---:|---:|\n" + rows + "\n\n"
        "| LoRA step, batch | ms, reference each step | ms, precomputed | speed-up |\n|---:|---:|---:|---:|\n"
        + pre
        + real_line
    )


def sharded_table(d: dict) -> str:
    def gb(x):
        return f"{x / 1e9:.3f}"

    lines = [
        machine_line(d["machine"]) + " SmolLM2-135M, FSDP2 on 2 CPU processes, bf16 mixed precision.\n",
        "| training | efficient loading | peak host GB, rank 0 / 1 | checkpoint s, rank 0 / 1 "
        "| shard GB per rank | rank 0's other files GB |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in d["rows"]:
        rss = " / ".join(f"{x:.2f}" for x in r["peak_host_rss_gb_per_rank"])
        secs = " / ".join(f"{max(s):.1f}" for s in r["checkpoint_seconds_per_rank"])
        lines.append(
            f"| {'LoRA' if r['lora'] else 'full'} | {'yes' if r['efficient_loading'] else 'no'} | {rss} | {secs} "
            f"| {gb(r['shard_bytes_per_rank'][0])} | {gb(r['rank0_other_bytes'])} |"
        )
    e = d["mistral_7b"]
    lines.append(
        f"\nMistral-7B on 8 ranks, from the bytes per trained parameter measured here "
        f"({e['lora']['bytes_per_trained_param']} LoRA, {e['full']['bytes_per_trained_param']} full: a float32 weight "
        f"and two Adam moments): {e['lora']['gb_per_rank_8_ranks']:.3f} GB per rank for LoRA, "
        f"{e['full']['gb_per_rank_8_ranks']:.1f} GB per rank for full fine-tuning, per checkpoint."
    )
    return "\n".join(lines)


def generation_table(d: dict) -> str:
    lines = [
        machine_line(d["machine"])
        + f" {d['model']}, {d['answers']} instructions of mixed length; medians of alternating rounds.\n",
        "| order, batch | tokens / s | s | generated tokens | speed x given order, batch 8 |",
        "|---|---:|---:|---:|---:|",
    ]
    label = {"given_order_b8": "given order, 8", "by_length_b16": "longest first, 16 (default on CPU)"}
    for r in d["rows"]:
        lines.append(
            f"| {label.get(r['case'], r['case'])} | {r['tokens_per_second']:.1f} | {r['seconds']:.0f} "
            f"| {r['new_tokens']:.0f} | {r['speed_vs_given_order_b8']:.2f} |"
        )
    return "\n".join(lines)


def packing_table(d: dict) -> str:
    """bench_packing.py's cases and ratios (its targets: the CPU's, from issue 21)."""
    mfu = any("mfu" in c for c in d["cases"].values())  # measured on a GPU only
    lines = [
        machine_line(d["machine"])
        + f" {d['shape']}, {d['pairs_per_step']} pairs per step at UltraFeedback lengths, LoRA, gradient "
        f"checkpointing; median of {d['measured_steps']} steps after {d['warmup_steps']} warm-up.\n",
        "| case | s / step | pairs / s | real tokens / s | tokens computed / pair | peak GB |"
        + (" MFU |" if mfu else ""),
        "|---|---:|---:|---:|---:|---:|" + ("---:|" if mfu else ""),
    ]
    for name, c in d["cases"].items():
        if "error" in c:
            lines.append(f"| {name} | failed: {c['error'][:80]} | | | | |" + (" |" if mfu else ""))
            continue
        lines.append(
            f"| {name} | {c['seconds']:.1f} | {c['pairs_per_second']:.3f} | {c['real_tokens_per_second']:.0f} "
            f"| {c['tokens_computed_per_pair']:.0f} | {c['peak_bytes'] / 1e9:.2f} |"
            + (f" {100 * c['mfu']:.0f}% |" if "mfu" in c else "")
        )
    r = d["ratios"].get("packed_vs_padded")
    if r:
        lines.append(
            f"\nPacked against padded: tokens computed per pair {met_at_most(r['tokens_computed_per_pair'], 0.5)}, "
            f"step time {met_at_most(r['step_time'], 0.6)}."
        )
    t = d["ratios"].get("packed_vs_trl")
    if t:
        lines.append(f"Packed against TRL 1.16: {t['pairs_per_second']:.2f}x its pairs per second.")
    return "\n".join(lines)


def met_at_most(value: float, target: float) -> str:
    return f"{value:.2f}x (target <= {target}: {'met' if value <= target else 'NOT met'})"


def document(name: str) -> Path:
    """The markdown file that holds table ``name``: README.md or one of docs/*.md."""
    for path in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        if f"<!-- bench:{name} -->" in path.read_text():
            return path
    raise SystemExit(f"no <!-- bench:{name} --> section in README.md or docs/*.md")


def gpu_table(d: dict) -> str:
    m = d["machine"]

    def cell(r):
        if not r["ok"]:
            return f"| {r['name']} | {r['launch']} x {r['processes']} | FAILED ({r['exit']}) | | | |"
        acc, fsd = r["reward_accuracy"], r["fsd_violation"]
        return (
            f"| {r['name']} | {r['distributed']['backend']} x {r['processes']} | {r['seconds']:.0f} | "
            f"{r['train_steps_per_second']} | {acc[0]:.2f} -> {acc[1]:.2f} | {fsd[0]:.2f} -> {fsd[1]:.2f} |"
        )

    eq = d.get("equality") or {}
    equality = (
        f"Equality (float32, SGD): FSDP2 on {eq['processes']} process(es) x 8 rows vs one process x "
        f"{8 * eq['processes']} rows, max weight difference {eq['max_abs_weight_diff']:.1e} "
        f"({'ok' if eq['ok'] else 'NOT ok'}, limit 1e-4)."
        if "max_abs_weight_diff" in eq
        else "Equality check: did not run."
    )
    return (
        f"Machine: {m['gpus']} x {m['gpu']}, torch {m['torch']} (CUDA {m['cuda']}).\n\n"
        "| run | backend x processes | s | steps / s | eval reward accuracy | eval FSD violation |\n"
        "|---|---|---:|---:|---:|---:|\n" + "\n".join(cell(r) for r in d["runs"]) + "\n\n" + equality
    )


def main() -> None:
    tables = (
        ("loss", loss_table),
        ("train", train_table),
        ("scale", scale_table),
        ("memory", memory_table),
        ("sharded", sharded_table),
        ("generation", generation_table),
        ("packing", packing_table),
        ("gpu", gpu_table),
    )
    wanted = set(sys.argv[1:]) or {name for name, _ in tables}  # e.g. `readme_tables.py memory`
    for name, fn in tables:
        path = RESULTS / f"{name}.json"
        if name not in wanted or not path.is_file():
            continue
        table = fn(json.loads(path.read_text()))
        target = document(name)
        pattern = re.compile(rf"(<!-- bench:{name} -->\n).*?(<!-- /bench:{name} -->)", re.S)
        target.write_text(pattern.sub(lambda m: m.group(1) + table + "\n" + m.group(2), target.read_text()))
        print(f"{target.relative_to(REPO)}: table {name} updated")


if __name__ == "__main__":
    main()
