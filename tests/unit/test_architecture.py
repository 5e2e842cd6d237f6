"""The tree keeps the shape docs and README describe: the layers of ``aot`` import one way (each
module only its own layer or those below, no cycle), imports sit at module top (but for the
optional packages), evaluation imports ``aot`` and never the reverse, modules stay readable, and
every package is installed."""

import ast
from pathlib import Path

import pytest
import tomllib

REPO = Path(__file__).resolve().parents[2]
#: aot's layers, lowest first (aot/__init__.py lists them with what each holds)
LAYERS = [
    ["aot.files", "aot.distributed", "aot.names"],
    ["aot.sorting", "aot.quantiles"],
    ["aot.losses", "aot.metrics", "aot.methods"],
    ["aot.data", "aot.batches", "aot.logps", "aot.packing"],
    ["aot.config"],
    ["aot.arguments"],
    ["aot.fixtures.tiny", "aot.fixtures.smollm2", "aot.fixtures", "aot.models"],
    ["aot.backends", "aot.reference"],
    ["aot.scoring", "aot.precompute", "aot.diagnostics"],
    ["aot.shards", "aot.checkpoint", "aot.preemption", "aot.rundir", "aot.trainer"],
    ["aot.build", "aot.run"],
]
LAYER = {module: i for i, layer in enumerate(LAYERS) for module in layer}
#: imported inside functions on purpose: optional extras (eval, deepspeed), or TRL, whose import
#: takes seconds and which only KTO needs
LAZY = {"deepspeed", "lm_eval", "alpaca_eval", "pandas", "trl"}
MAX_LINES = 320


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def sources(package: str) -> dict[str, Path]:
    return {module_name(p): p for p in sorted((REPO / package).rglob("*.py"))}


def imports(path: Path) -> tuple[set[str], list[tuple[int, str]]]:
    """(first-party modules imported at module level, [(line, name)] of imports inside functions)."""
    tree = ast.parse(path.read_text())
    top, inner = set(), []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            for sub in ast.walk(node):
                if isinstance(sub, (ast.Import, ast.ImportFrom)) and sub.col_offset > 0:
                    names = [a.name for a in sub.names] if isinstance(sub, ast.Import) else [sub.module]
                    inner += [(sub.lineno, n) for n in names]
    for node in tree.body:
        if isinstance(node, ast.Import):
            top |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            top.add(node.module)
            top |= {f"{node.module}.{a.name}" for a in node.names}  # from aot.fixtures import tiny
    first_party = {m for m in top if m.split(".")[0] in ("aot", "evaluation")}
    return first_party, inner


AOT, EVALUATION = sources("aot"), sources("evaluation")


def test_every_aot_module_has_a_layer():
    assert set(AOT) - {"aot"} == set(LAYER), "add new modules to LAYERS (and to aot/__init__.py's list)"


@pytest.mark.parametrize("name", sorted(set(AOT) - {"aot"}))
def test_each_module_imports_only_its_own_layer_or_lower(name):
    first_party, _ = imports(AOT[name])
    for dep in first_party:
        module = dep if dep in LAYER else dep.rsplit(".", 1)[0]
        assert module.startswith("aot"), f"{name} imports {dep}: aot never imports evaluation"
        assert LAYER[module] <= LAYER[name], (
            f"{name} (layer {LAYER[name]}) imports {module} (layer {LAYER[module]})"
        )


def test_the_import_graph_has_no_cycle():
    graph = {}
    for name, path in {**AOT, **EVALUATION}.items():
        deps = {d if d in AOT or d in EVALUATION else d.rsplit(".", 1)[0] for d in imports(path)[0]}
        graph[name] = {d for d in deps if d != name and (d in AOT or d in EVALUATION)}
    done, visiting = set(), []

    def visit(node):
        assert node not in visiting, f"import cycle: {' -> '.join(visiting[visiting.index(node) :] + [node])}"
        if node in done:
            return
        visiting.append(node)
        for dep in graph.get(node, ()):
            visit(dep)
        visiting.pop()
        done.add(node)

    for node in graph:
        visit(node)


@pytest.mark.parametrize("name", sorted({**AOT, **EVALUATION}))
def test_imports_sit_at_module_top_but_for_optional_packages(name):
    path = {**AOT, **EVALUATION}[name]
    _, inner = imports(path)
    lazy = [(line, n) for line, n in inner if n.split(".")[0] not in LAZY]
    assert not lazy, f"{path.relative_to(REPO)}: imports inside functions {lazy}"


@pytest.mark.parametrize("name", sorted({**AOT, **EVALUATION}))
def test_modules_stay_readable(name):
    path = {**AOT, **EVALUATION}[name]
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(REPO)}: {lines} lines; split it by concern"


def test_every_package_is_installed_and_the_recipes_are_package_data():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = {module_name(p.parent / "__init__.py") for p in REPO.glob("*/**/__init__.py")}
    packages = {p for p in packages if p.split(".")[0] in ("aot", "evaluation")} | {"aot.recipes"}
    assert set(config["packages"]) == packages
    from importlib.resources import files

    assert (Path(str(files("aot.recipes"))) / "train.yaml").is_file()


def test_the_public_api_resolves():
    import aot

    for name in aot.__all__:
        assert getattr(aot, name) is not None, name
