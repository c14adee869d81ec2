"""The package's layers (mkviz/__init__.py, README "Layout"): every import between mkviz modules, read from the
source with ast, goes from a layer to itself or to a layer below; none forms a circle; all sit at module level;
none takes a private (underscore) name from another module."""
from __future__ import annotations

import ast
import importlib
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import mkviz

PACKAGE = Path(__file__).resolve().parents[1] / "mkviz"
# bottom to top: a module may import from its own layer and the layers before it
LAYERS = ("core", "data", "explain", "training", "viz", "studies", "course", "apps")
MAX_MODULE_LINES = 500


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str) -> list[tuple[str, list[str], ast.AST, bool]]:
    """(target module, names taken, node, at module level) for every import of an mkviz module in `name`."""
    path = MODULES[name]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    top = {id(n) for n in tree.body} | {id(n) for node in tree.body if isinstance(node, (ast.If, ast.Try))
                                        for n in ast.walk(node)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source != "mkviz" and not source.startswith("mkviz."):
                continue
            for alias in node.names:  # `from ..core import hf` takes the module mkviz.core.hf
                target = f"{source}.{alias.name}" if f"{source}.{alias.name}" in MODULES else source
                found.append((target, [alias.name], node, id(node) in top))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "mkviz":
                    found.append((alias.name, [], node, id(node) in top))
    return found


def layer_of(name: str) -> int | None:
    parts = name.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


def test_the_package_root_holds_only_its_face_and_the_layers():
    """In a clone; a built wheel adds the data folder `mkviz/_data` (pyproject.toml's package-dir: the shipped
    checkpoints), which holds no module."""
    assert {p.name for p in PACKAGE.iterdir() if p.name != "__pycache__"} == {"__init__.py", *LAYERS}
    assert {p.name for p in PACKAGE.iterdir() if p.suffix == ".py"} == {"__init__.py"}
    assert {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()} == set(LAYERS)
    pyproject = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text(encoding="utf-8"))
    assert pyproject["tool"]["setuptools"]["packages"] == ["mkviz", *(f"mkviz.{n}" for n in LAYERS), "mkviz._data"]


@pytest.mark.parametrize("name", sorted(n for n in MODULES if layer_of(n) is not None))
def test_imports_go_down_the_layers_at_module_level(name):
    own = layer_of(name)
    for target, names, node, at_top in imports_of(name):
        where = f"{name} (line {node.lineno}) imports {target}"
        assert target in MODULES, f"{where}: no such module"
        if target == "mkviz":  # the package face: only its version string
            assert names == ["__version__"], where
            continue
        assert layer_of(target) <= own, (f"{where}: layer {LAYERS[own]} may import only from "
                                         f"{', '.join(LAYERS[:own + 1])}")
        assert at_top, f"{where} inside a function: imports between mkviz modules sit at the top"
        private = [n for n in names if n.startswith("_")]
        assert not private, f"{where}: private names {private} taken from another module"


def test_no_import_forms_a_circle():
    graph = {name: {t for t, _, _, _ in imports_of(name) if t in MODULES and t != name} for name in MODULES}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for target in sorted(graph[name]):
            if state.get(target) == 1:
                circle = path[path.index(target):] + [target] if target in path else [name, target]
                pytest.fail("import circle: " + " -> ".join(circle))
            if target not in state:
                visit(target, path + [target])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_the_face_imports_no_mkviz_module_up_front():
    """`mkviz --version` answers without torch: mkviz/__init__.py loads its public names on first use."""
    assert not [t for t, *_ in imports_of("mkviz")]


def test_a_layer_rule_that_is_broken_is_caught(tmp_path):
    """The check above is not vacuous: core importing explain is reported."""
    bad = tmp_path / "mkviz" / "core" / "bad.py"
    bad.parent.mkdir(parents=True)
    bad.write_text("from ..explain.record import record_attention\n")
    MODULES["mkviz.core.bad"] = bad
    try:
        with pytest.raises(AssertionError, match="layer core may import only from core"):
            test_imports_go_down_the_layers_at_module_level("mkviz.core.bad")
    finally:
        del MODULES["mkviz.core.bad"]


def test_no_module_is_longer_than_500_lines():
    """One concern per module: a module a reader can take in whole."""
    long = {name: n for name, path in MODULES.items()
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES}
    assert not long, long


@pytest.mark.parametrize("old", sorted(mkviz.MOVED))
def test_an_old_module_path_names_its_new_module(old):
    """mkviz.MOVED keeps the flat paths of before the layers: the same module object, with its own spec."""
    module = importlib.import_module(f"mkviz.{old}")
    new = f"mkviz.{mkviz.MOVED[old]}"
    assert module is importlib.import_module(new) and module.__spec__.name == new
    assert getattr(mkviz, old) is module


def test_the_module_path_mkviz_convert_is_dropped_for_the_function():
    assert callable(mkviz.convert) and mkviz.convert is importlib.import_module("mkviz.core.models").convert
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("mkviz.convert")


@pytest.mark.parametrize("old, usage", [("book", "usage: python -m mkviz.book"), ("bench", "usage: mkviz bench"),
                                        ("shipped", "usage:"), ("train", "usage: mkviz train")])
def test_old_module_paths_run_with_python_m(old, usage):
    out = subprocess.run([sys.executable, "-m", f"mkviz.{old}", "--help"], capture_output=True, text=True,
                         cwd=PACKAGE.parent, timeout=300)
    assert out.returncode == 0 and out.stdout.startswith(usage), out.stderr[-2000:]
