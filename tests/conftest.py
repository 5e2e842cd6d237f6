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

from aot.run import RECIPES, compose  # noqa: E402,F401  (tests import them from here)


@pytest.fixture(scope="session")
def tiny_path():
    from aot.tiny import build_tiny

    return build_tiny()
