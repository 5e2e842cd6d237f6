"""File helpers the whole package shares: where caches live, atomic writes, short hashes."""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from pathlib import Path
from typing import Callable


def cache_dir() -> Path:
    """Where built fixtures, downloaded wheels and reference log-probs are kept: ``$AOT_CACHE_DIR``,
    else ``~/.cache/aot``. The Makefile and ``slurm/train.sh`` point it at the checkout's ``.cache/``."""
    return Path(os.environ.get("AOT_CACHE_DIR") or Path.home() / ".cache" / "aot")


def short_hash(data: bytes | str, length: int = 12) -> str:
    """The first ``length`` hex digits of the SHA-1 of ``data``: names of cache entries and runs."""
    return hashlib.sha1(data.encode() if isinstance(data, str) else data).hexdigest()[:length]


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """``write(tmp)`` creates a file or a directory at a temporary path beside ``path``, which then
    takes its place: a reader (another rank, an interrupted run's successor) never sees half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        write(tmp)
        if path.is_dir():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()
    return path
