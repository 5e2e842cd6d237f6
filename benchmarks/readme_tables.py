"""Rewrite the README's benchmark tables from benchmarks/results/*.json (run after a benchmark).

    python benchmarks/readme_tables.py

Each table sits between ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->`` in README.md.
"""

import json
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def loss_table(d: dict) -> str:
    m = d["machine"]
    rows = "\n".join(
        f"| {r['case']} | {r['n']} | {r['ms']:.3f} | {r['vs_trl_inline']:.2f} | {r['ns_per_nlogn']:.1f} |"
        for r in d["rows"]
    )
    return (
        f"Machine: {m['processor']}, {m['cpus']} CPUs, torch {m['torch']} ({m['torch_threads']} threads).\n\n"
        "| case | n | ms | x trl | ns / (n log2 n) |\n|---|---:|---:|---:|---:|\n" + rows
    )


def train_table(d: dict) -> str:
    s = d["summary"]
    return (
        f"Batch {d['per_device_batch']}, {d['steps']} steps, median of {len(d['runs']['ours'])} alternating runs; "
        f"machine: {d['machine']['processor']} ({d['machine']['device']}).\n\n"
        "| | steps / s | peak memory (MB) |\n|---|---:|---:|\n"
        f"| ours | {s['ours']['steps_per_second']:.2f} | {s['ours']['peak_bytes'] / 2**20:.0f} |\n"
        f"| TRL DPOTrainer | {s['trl']['steps_per_second']:.2f} | {s['trl']['peak_bytes'] / 2**20:.0f} |\n"
        f"| ratio | {s['ratio_steps_per_second']:.2f} | {s['ratio_peak_memory']:.2f} |"
    )


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
    return (
        f"Machine: {d['machine']['platform']} ({d['machine']['device']}); memory: {d['rows'][0]['peak_kind']}.\n\n"
        "| step | OT batch | micro-batch | ms / sample | x plain same size | peak MB | x micro-batch run |\n"
        "|---|---:|---:|---:|---:|---:|---:|\n" + rows + "\n\n"
        "| LoRA step, batch | ms, reference each step | ms, precomputed | speed-up |\n|---:|---:|---:|---:|\n"
        + pre
    )


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
    readme = (REPO / "README.md").read_text()
    tables = (("loss", loss_table), ("train", train_table), ("scale", scale_table), ("gpu", gpu_table))
    for name, fn in tables:
        path = RESULTS / f"{name}.json"
        if not path.is_file():
            continue
        table = fn(json.loads(path.read_text()))
        pattern = re.compile(rf"(<!-- bench:{name} -->\n).*?(<!-- /bench:{name} -->)", re.S)
        if not pattern.search(readme):
            raise SystemExit(f"README.md has no <!-- bench:{name} --> section")
        readme = pattern.sub(lambda m: m.group(1) + table + "\n" + m.group(2), readme)
    (REPO / "README.md").write_text(readme)
    print("README.md tables updated")


if __name__ == "__main__":
    main()
