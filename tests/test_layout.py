"""The package's structure: imports run one way, and nothing imports ``__init__``.

The imports are read from the source with ``ast`` (module-level and
function-level alike), so an import hidden inside a function to dodge a cycle
counts too. The module map is the one described in README's "Development"
section; a new module gets a place in ``LAYERS`` below.
"""

import ast
import sys
from pathlib import Path

import pytest

import sktransfer

PACKAGE = Path(sktransfer.__file__).parent

# Bottom to top: a module may import only modules of strictly lower layers.
LAYERS = [
    # structure: blocks, splits, freezing (and modules that import nothing: the
    # version, shared docstrings, devices and precision)
    ["_version", "_docstrings", "_blocknet", "_device"],
    ["_families"],
    ["_blocks"],
    # inputs and model sources
    ["_inputs"],
    ["_weight_files"],
    ["_timm", "_hf"],
    ["_weights"],
    ["_inspect"],
    # shared estimator pieces, then training
    ["_base", "_frozen_store"],
    ["_prefix_cache", "_penalties", "_accelerate", "_heads"],
    ["_adapt"],
    ["_net"],
    ["_trainer", "_pretext"],
    ["_persist", "_auto"],
    # estimators
    ["_extract", "_pretrain", "_finetune"],
    # public face
    ["_transferability"],
    ["metrics", "plot", "datasets"],
    ["__init__"],
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def _modules():
    return sorted(p.stem for p in PACKAGE.glob("*.py"))


def _imports(name):
    """The package modules that ``name`` imports (``"__init__"`` for the package itself)."""
    tree = ast.parse((PACKAGE / f"{name}.py").read_text())
    found = set()
    known = set(_modules())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module and node.module.split(".")[0] == "sktransfer":
                parts = node.module.split(".")[1:]
            elif node.level == 1:
                parts = node.module.split(".") if node.module else []
            else:
                continue
            if parts:
                found.add(parts[0])
            else:  # ``from . import x``: a submodule, or a name of the package __init__
                found.update(a.name if a.name in known else "__init__" for a in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "sktransfer":
                    found.add(parts[1] if len(parts) > 1 else "__init__")
    found.discard(name)
    return found


GRAPH = {name: _imports(name) for name in _modules()}


def _cycle(graph):
    """One import cycle as a list of modules, or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_cycle_finder_finds_a_planted_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_import_reader_sees_function_level_and_package_imports(tmp_path, monkeypatch):
    (tmp_path / "_x.py").write_text(
        "from ._y import a\n"
        "def f():\n    from . import __version__\n    from . import _y\n"
        "    import sktransfer._z\n"
    )
    for other in ("_y", "_z"):
        (tmp_path / f"{other}.py").write_text("")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", tmp_path)
    assert _imports("_x") == {"_y", "_z", "__init__"}


def test_no_import_cycle():
    cycle = _cycle(GRAPH)
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


def test_nothing_imports_the_package_init():
    importers = sorted(name for name, deps in GRAPH.items() if "__init__" in deps)
    assert not importers, (
        f"{importers} import the package __init__; import from the module that defines "
        "the name instead (e.g. sktransfer._version for __version__)."
    )


@pytest.mark.parametrize("name", _modules())
def test_imports_run_one_way(name):
    assert name in RANK, (
        f"sktransfer/{name}.py has no place in the module map: add it to LAYERS in "
        f"{Path(__file__).name} (and to README's Development section)."
    )
    upward = sorted(dep for dep in GRAPH[name] if RANK.get(dep, -1) >= RANK[name])
    assert not upward, (
        f"{name} imports {upward}, which sit at its level or above it in the import "
        "order (structure -> weights -> training -> estimators -> public face)."
    )


MAX_MODULE_LINES, MAX_CLASS_LINES = 600, 350


@pytest.mark.parametrize("name", _modules())
def test_modules_and_classes_stay_small(name):
    source = (PACKAGE / f"{name}.py").read_text()
    n_lines = len(source.splitlines())
    assert n_lines <= MAX_MODULE_LINES, (
        f"sktransfer/{name}.py has {n_lines} lines (more than {MAX_MODULE_LINES}): split it "
        "along a concept, as README's Development section describes."
    )
    big = {node.name: node.end_lineno - node.lineno + 1
           for node in ast.walk(ast.parse(source)) if isinstance(node, ast.ClassDef)
           and node.end_lineno - node.lineno + 1 > MAX_CLASS_LINES}
    assert not big, (
        f"classes of sktransfer/{name}.py longer than {MAX_CLASS_LINES} lines: {big}; move "
        "what is not the class's own concern to the module that owns it (or share a "
        "docstring fragment, sktransfer/_docstrings.py)."
    )


# modules with no logic of their own to test
WITHOUT_TESTS = {"__init__", "_version"}


def test_every_module_has_its_test_file():
    tests = Path(__file__).parent
    missing = [f"tests/test_{name.lstrip('_')}.py" for name in _modules()
               if name not in WITHOUT_TESTS and not (tests / f"test_{name.lstrip('_')}.py").exists()]
    assert not missing, f"the tests of a package module live in tests/test_<module>.py: {missing}"
