import os
import sys

# Tests are offline and CPU-only, whatever the machine.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
sys.path.insert(0, os.path.dirname(__file__))

import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = os.path.join(REPO, "recipes")


def compose(*overrides):
    """The run config exactly as scripts/train.py composes it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=RECIPES, version_base="1.3"):
        return hydra_compose(config_name="train", overrides=list(overrides))


@pytest.fixture(scope="session")
def tiny_path():
    from aot.tiny import build_tiny

    return build_tiny()
