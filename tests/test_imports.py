"""Every module of the package imports (catches a broken import before a long run does)."""

import importlib
import pkgutil

import pytest

import aot

MODULES = sorted(m.name for m in pkgutil.walk_packages(aot.__path__, prefix="aot."))


def test_the_package_has_modules():
    assert {"aot.losses", "aot.sorting"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_module_imports(name):
    importlib.import_module(name)
