"""The project installs itself: environment.yml and pyproject.toml agree, the CLI answers."""
from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

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
        if isinstance(dep, dict):  # the pip: section installs mkviz itself
            assert dep["pip"] == ["-e ."], dep
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


def test_cli_help_and_unknown_command():
    ok = subprocess.run([sys.executable, "-m", "mkviz.cli", "--help"], capture_output=True, text=True)
    assert ok.returncode == 0 and "demo" in ok.stdout and "bench" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "mkviz.cli", "nope"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown command 'nope'" in bad.stderr
