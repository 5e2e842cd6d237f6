"""Every module of the packages imports (catches a broken import before a long run does)."""

import importlib
import pkgutil

import pytest

import aot
import evaluation

MODULES = sorted(
    m.name
    for package in (aot, evaluation)
    for m in pkgutil.walk_packages(package.__path__, prefix=f"{package.__name__}.")
)


def test_the_package_has_modules():
    assert {"aot.losses", "aot.sorting"} <= set(MODULES)


#: modules that run in another Python (vLLM has its own environment, ``make vllm``)
OWN_PYTHON = {"evaluation.vllm_worker": "vllm"}


@pytest.mark.parametrize("name", MODULES)
def test_module_imports(name):
    if name in OWN_PYTHON:
        pytest.importorskip(OWN_PYTHON[name])
    importlib.import_module(name)
