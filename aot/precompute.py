"""Reference log-probs computed once per dataset and cached on disk (``train.precompute_ref``).

The cache key covers everything the values depend on: the model's files (or its hub commit),
dtype, attention implementation, the autocast of the training forward, the batch layout (packed
or padded: equal up to float rounding, not bit for bit), and the exact token ids (so data, chat
template and truncation). Only global rank 0 reads and writes the cache and gives
the table to the other ranks, so nodes need not share a disk.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from huggingface_hub import try_to_load_from_cache

from aot.distributed import decide_on_main
from aot.files import atomic_write, cache_dir, short_hash
from aot.scoring import score_rows

log = logging.getLogger("aot")


def _model_identity(path: str, revision: str | None = None) -> dict:
    """A model's name plus what pins its weights: for a local directory the size and mtime of its
    weight/config files; for a hub id the commit of the snapshot it was loaded from."""
    files = {}
    if Path(path).is_dir():
        for f in sorted(Path(path).iterdir()):
            if f.suffix in (".safetensors", ".bin", ".json"):
                files[f.name] = [f.stat().st_size, int(f.stat().st_mtime)]
        return {"model": path, "files": files}
    cached = try_to_load_from_cache(path, "config.json", revision=revision)
    commit = Path(cached).parent.name if isinstance(cached, str) else None  # .../snapshots/<sha>/config.json
    return {"model": path, "revision": revision, "commit": commit}


def ref_cache_key(cfg, path: str, features: list[dict], autocast: str = "no", packed: bool = False) -> str:
    """Keyed on the model (and its commit), dtype, attention implementation, the autocast the
    training forward runs under, the layout, and the exact token ids (so data and tokenisation)."""
    identity = {
        **_model_identity(path, cfg.model.get("revision")),
        "dtype": cfg.model.dtype,
        "attn_implementation": cfg.model.attn_implementation,
        "autocast": autocast,
        "layout": "packed" if packed else "padded",
    }
    data = [json.dumps(identity, sort_keys=True).encode()]
    for f in features:
        for key in ("prompt_ids", "chosen_ids", "rejected_ids", "completion_ids"):
            if key in f:
                data += [key.encode(), torch.tensor(f[key], dtype=torch.int64).numpy().tobytes()]
    return short_hash(b"".join(data), 16)


def attach_ref_logps(cfg, path, trainer, features: list[dict], collator) -> Path:
    """Add ``ref_logps`` to every feature, from the disk cache or computed once.

    Runs once the trainer has prepared the model (``TrainerHooks.once_prepared``): the rows are split
    across every rank and go through the prepared reference (sharded under FSDP/ZeRO-3, under
    the run's autocast), then gathered. Only the global main process reads and writes the cache
    (a unique temporary name, then an atomic rename) and broadcasts a cached table, so several
    nodes never race on a shared filesystem nor need one. Returns the cache file."""
    accelerator = trainer.accelerator
    key = ref_cache_key(cfg, path, features, autocast=accelerator.mixed_precision, packed=collator.packed)
    cache = cache_dir() / "ref_logps" / f"{key}.pt"
    rows = decide_on_main(lambda: torch.load(cache) if cache.is_file() else None)
    if rows is not None:
        log.info("reference log-probs: loaded %s", cache)
    else:
        rows = score_rows(
            trainer, features, collator, trainer.args.per_device_eval_batch_size, reference=True
        )
        if accelerator.is_main_process:
            atomic_write(cache, lambda tmp: torch.save(rows, tmp))
        log.info(
            "reference log-probs: computed for %d rows on %d ranks, cached in %s",
            len(rows),
            accelerator.num_processes,
            cache,
        )
    for feature, row in zip(features, rows.tolist()):
        feature["ref_logps"] = row
    return cache
