"""The project installs itself: environment.yml and pyproject.toml agree, the CLI answers, and every
citation of the design document points at a section it has."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONDA_TO_PIP = {"pytorch": "torch", "python-kaleido": "kaleido"}
NOT_PACKAGES = {"python", "pip"}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _pyproject_names() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {_name(r) for r in project["dependencies"]}
    for extra in project["optional-dependencies"].values():
        names |= {_name(r) for r in extra if not r.startswith("mkviz")}
    return names


def _environment_names() -> set[str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    names = set()
    for dep in env["dependencies"]:
        if isinstance(dep, dict):  # the pip: section installs mkviz itself, then what conda-forge lacks
            assert dep["pip"][0] == "-e .", dep
            names |= {_name(r) for r in dep["pip"][1:]}
            continue
        name = _name(dep)
        if name not in NOT_PACKAGES:
            names.add(CONDA_TO_PIP.get(name, name))
    return names


def test_environment_yml_matches_pyproject():
    assert _environment_names() == _pyproject_names()
    assert {"torch", "timm", "jupyterlab", "ipywidgets", "plotly", "captum", "jupytext", "nbmake"} <= _pyproject_names()


def test_constraints_pin_every_dependency():
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[_name(name)] = version
    assert set(pins) >= _pyproject_names()
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1" and pins["timm"].startswith("1.0.")


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_cli_version_and_help_do_not_load_torch():
    """`mkviz --help` and `--version` answer from the command table alone: the package imports lazily."""
    code = ("import sys, mkviz.cli; rc = mkviz.cli.main(['--version']); mkviz.cli.main(['--help']); "
            "print(rc, 'torch' in sys.modules, 'timm' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[0] == "mkviz 0.1.0" and out.splitlines()[-1] == "0 False False"
    import mkviz
    assert set(mkviz.__all__) <= set(dir(mkviz)) and callable(mkviz.convert) and mkviz.figures is mkviz.viz.figures
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        mkviz.nope


def test_cli_help_and_unknown_command():
    ok = subprocess.run([sys.executable, "-m", "mkviz.cli", "--help"], capture_output=True, text=True)
    assert ok.returncode == 0 and "demo" in ok.stdout and "bench" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "mkviz.cli", "nope"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown command 'nope'" in bad.stderr


# ----------------------------------------------------------------------------- design document
DESIGN = ROOT / "docs" / "design.md"
# a path or link target ending in "design.md", closing backticks/brackets, then one or more section
# numbers: "docs/design.md §2", "[`docs/design.md`](../docs/design.md) §2.8", "docs/design.md §2 and §6"
CITATION = re.compile(r"(\S*)design\.md[`\])]*[ \t]*((?:§\d+(?:\.\d+)?(?:,? *(?:and|or)? *)?)+)")
SECTION_NUMBER = re.compile(r"§(\d+(?:\.\d+)?)")
OLD_NAME = "DESIGN" + ".md"  # a file the repository never had; spelled in two parts so this file does not cite it


def _design_sections() -> set[str]:
    """Section numbers of docs/design.md: "## 2. Title" gives "2", "### 2.8 Title" gives "2.8"."""
    text = DESIGN.read_text(encoding="utf-8")
    return set(re.findall(r"^## (\d+)\. \S", text, re.M)) | set(re.findall(r"^### (\d+\.\d+) \S", text, re.M))


def _citing_files() -> list[Path]:
    files = [ROOT / "README.md", *sorted((ROOT / "mkviz").rglob("*.py")), *sorted((ROOT / "tests").glob("*.py")),
             *sorted((ROOT / "notebooks").glob("*.py")), *sorted((ROOT / "notebooks").glob("*.ipynb")),
             *sorted((ROOT / "docs").rglob("*.md"))]
    return [f for f in files if f.is_file()]


def _text(path: Path) -> str:
    if path.suffix == ".ipynb":  # the cells' text as a reader sees it, not JSON-escaped
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        return "\n".join("".join(cell["source"]) for cell in cells)
    return path.read_text(encoding="utf-8")


def _cited_file(path: Path, prefix: str) -> Path:
    """The file a citation names: a Markdown link target ("](../docs/") is relative to the citing file,
    a plain path ("`docs/") to the repository root."""
    link, directory = re.search(r"(\]\()?([^`(\[\"'\s]*)$", prefix).groups()
    return ((path.parent if link else ROOT) / f"{directory}design.md").resolve()


def test_design_citations_point_at_existing_sections():
    """Every "design.md §N" citation in README, mkviz, tests, notebooks (both files of each pair) and docs
    names docs/design.md (a path from the repository root, or a link that resolves to it) and a section it
    has; the old upper-case name (OLD_NAME) is cited nowhere."""
    sections = _design_sections()
    assert {str(n) for n in range(1, 10)} <= sections, f"design.md lacks sections 1-9: {sorted(sections)}"
    assert {"2.7", "2.8", "3.1", "7.1", "7.2"} <= sections, sorted(sections)
    cited, bad, bare = [], [], []
    for path in _citing_files():
        text, rel = _text(path), path.relative_to(ROOT).as_posix()
        bare += [f"{rel}: line {text[:m.start()].count(chr(10)) + 1}" for m in re.finditer(re.escape(OLD_NAME), text)]
        for m in CITATION.finditer(text):
            numbers = SECTION_NUMBER.findall(m.group(2))
            cited.append((rel, tuple(numbers)))
            if _cited_file(path, m.group(1)) != DESIGN.resolve():
                bad.append(f"{rel}: {m.group(0)!r} names {_cited_file(path, m.group(1))}, not docs/design.md")
            bad += [f"{rel}: {m.group(0)!r} cites §{n}, which docs/design.md does not have"
                    for n in numbers if n not in sections]
    assert not bare, f"citations of {OLD_NAME} (cite docs/design.md by path):\n" + "\n".join(bare)
    assert not bad, "\n".join(bad)
    # the places that explain the math cite it, so the scan above really sees them
    must_cite = {"README.md", "mkviz/core/key.py", "mkviz/explain/record.py", "mkviz/core/models.py", "tests/test_key.py",
                 "docs/reproduction.md", *(f"notebooks/{p.name}" for p in (ROOT / "notebooks").glob("0*"))}
    assert must_cite <= {rel for rel, _ in cited}, f"no citation found in {sorted(must_cite - {r for r, _ in cited})}"
    # a notebook and its paired .ipynb cite the same sections
    for source in (ROOT / "notebooks").glob("*.py"):
        py, nb = (f"notebooks/{source.stem}{ext}" for ext in (".py", ".ipynb"))
        assert sorted(n for r, n in cited if r == py) == sorted(n for r, n in cited if r == nb), source.name


def test_design_document_cross_references_and_named_tests_exist():
    """Inside docs/design.md a bare "§N" is a cross-reference to a section it has, and every test it names
    as pinning an invariant ("`test_x.py::test_y`", then "`::test_z`" for more in the same file) exists."""
    text = DESIGN.read_text(encoding="utf-8")
    sections = _design_sections()
    missing = sorted({n for n in SECTION_NUMBER.findall(text) if n not in sections})
    assert not missing, f"docs/design.md refers to sections it does not have: {missing}"
    named, current = set(), None
    for m in re.finditer(r"`(test_\w+\.py)?::(test_\w+)`", text):
        current = m.group(1) or current
        named.add((current, m.group(2)))
    assert len(named) >= 30 and {f for f, _ in named} >= {"test_key.py", "test_convert.py", "test_record.py"}, named
    for file, func in sorted(named):
        source = (ROOT / "tests" / file).read_text(encoding="utf-8")
        assert re.search(rf"^def {func}\(", source, re.M), f"docs/design.md names {file}::{func}; no such test"


# ----------------------------------------------------------------------------- module paths in the documents
MODULE_PATH = r"`?(mkviz/[\w/]+\.py)`?"
CODE_NAME = r"`([A-Za-z_][\w.]*)(?:\([^`]*\))?`"  # "`f`", "`f()`", "`f(lazy=True)`"
# "`mkviz/x.py`: `a`, `b` and `C.d`" (names after the path) and "`a` (`mkviz/x.py`" / "`a` in `mkviz/x.py`"
NAMES_AFTER_PATH = re.compile(r"`(mkviz/[\w/]+\.py)`:\s+((?:" + CODE_NAME + r"(?:,\s+|\s+and\s+|\s*/\s*)?)+)")
NAME_BEFORE_PATH = re.compile(CODE_NAME + r"\s+(?:\(|in\s+)`(mkviz/[\w/]+\.py)`")
# a CHANGELOG sentence with one of these words tells of a path as it was, which need not exist now
OLD_PATH_WORDS = re.compile(r"\b(was|were|used to|old|formerly|moved|dropped|removed|renamed|became|split)\b", re.I)


def _cited_module_paths() -> dict[str, list[str]]:
    """Each `mkviz/....py` path the documents cite -> where: docs/*.md, README.md, data/README.md, and
    CHANGELOG.md except its sentences about paths as they were (OLD_PATH_WORDS)."""
    cited: dict[str, list[str]] = {}
    for path in [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md", ROOT / "data" / "README.md"]:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for m in re.finditer(MODULE_PATH, line):
                cited.setdefault(m.group(1), []).append(f"{path.relative_to(ROOT)}:{number}")
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    for sentence in re.split(r"(?<=[.;])\s+|\n\s*\n|\n(?=\s*- )", changelog):
        if not OLD_PATH_WORDS.search(sentence):
            for m in re.finditer(MODULE_PATH, sentence):
                cited.setdefault(m.group(1), []).append("CHANGELOG.md")
    return cited


def test_module_paths_cited_in_the_documents_exist():
    """A document that sends a reader to `mkviz/x.py` sends them to a file there is (modules move: the
    package was regrouped into layers, CHANGELOG.md 2026-12-04)."""
    cited = _cited_module_paths()
    assert {"mkviz/__init__.py", "mkviz/core/key.py", "mkviz/training/checkpoint.py"} <= set(cited), sorted(cited)
    missing = {p: where for p, where in cited.items() if not (ROOT / p).is_file()}
    assert not missing, "documents cite module paths that do not exist:\n" + "\n".join(
        f"{p} ({', '.join(where)})" for p, where in sorted(missing.items()))


def _defines(source: str, name: str) -> bool:
    """`source` defines `name` (a function, class, module-level or class-level assignment, or attribute
    set on self); "A.b" needs both A and b."""
    return all(re.search(rf"^\s*(?:(?:async\s+)?def|class)\s+{re.escape(part)}\b"
                         rf"|^\s*{re.escape(part)}\s*(?::[^=\n]*)?=(?!=)"
                         rf"|\bself\.{re.escape(part)}\s*(?::[^=\n]*)?=(?!=)", source, re.M)
               for part in name.split("."))


def test_names_cited_with_a_module_path_in_the_design_document_live_there():
    """In docs/design.md, "`mkviz/x.py`: `a`, `b`", "`a` (`mkviz/x.py`)" and "`a` in `mkviz/x.py`" say
    that mkviz/x.py defines `a` (a leading "mkviz." is the public name); a renamed or moved function
    must take its citations with it."""
    text = DESIGN.read_text(encoding="utf-8")
    pairs = {(m.group(1), name) for m in NAMES_AFTER_PATH.finditer(text) for name in re.findall(CODE_NAME, m.group(2))}
    pairs |= {(m.group(2), m.group(1)) for m in NAME_BEFORE_PATH.finditer(text)}
    assert len(pairs) >= 40 and ("mkviz/training/loop.py", "_train_step") in pairs, sorted(pairs)
    wrong = sorted(f"{path}: {name}" for path, name in pairs
                   if not (ROOT / path).is_file()
                   or not _defines((ROOT / path).read_text(encoding="utf-8"), name.removeprefix("mkviz.")))
    assert not wrong, "docs/design.md cites names where they are not defined:\n" + "\n".join(wrong)


def test_no_function_in_the_package_is_longer_than_100_lines():
    """Functions a reader can hold in their head: from `def` to the last line, docstring included."""
    import ast

    long = []
    for path in sorted((ROOT / "mkviz").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > 100:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({length} lines)")
    assert not long, long
