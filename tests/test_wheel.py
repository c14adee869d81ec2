"""Installed, not cloned: a wheel built from the repository carries the shipped checkpoints, and an installed
mkviz finds and loads them from a folder outside the clone (a fresh virtual environment that reuses the
project's installed packages through a .pth file)."""
from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow

PROBE = """
import sys, mkviz, torch
from pathlib import Path
from mkviz.apps.demo import load_or_train
from mkviz.apps.shipped import SHIPPED_NAMES
from mkviz.training import shipped_checkpoints_dir
root = shipped_checkpoints_dir()
assert Path(mkviz.__file__).resolve().is_relative_to(Path(sys.prefix).resolve()), mkviz.__file__
assert root.resolve().is_relative_to(Path(sys.prefix).resolve()), root
loaded = [load_or_train(d, n, root, Path("out"), allow_training=False) for d in SHIPPED_NAMES for n in SHIPPED_NAMES[d]]
assert all(m.source == "shipped" for m in loaded)
x = torch.zeros(1, 3, 28, 28)
print(len(loaded), round(float(loaded[0].model(x).sum()), 4), root)
"""


def test_installed_wheel_carries_and_loads_the_shipped_checkpoints(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(ROOT),
                    "-w", str(wheels)], check=True, cwd=tmp_path, capture_output=True)
    wheel = next(wheels.glob("mkviz-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(n for n in names if n.startswith("mkviz/_data/checkpoints/"))
    assert len(shipped) == 2 * 14 and "mkviz/_data/checkpoints/fashion-mnist/kua-8/model.safetensors" in shipped
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "project_packages.pth").write_text(f"{sysconfig.get_paths()['purelib']}\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MKVIZ_ROOT")}
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q",
                    str(wheel)], check=True, capture_output=True, env=env)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    run = subprocess.run([str(python), "-c", PROBE], cwd=outside, env={**env, "OMP_NUM_THREADS": "1"},
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    count, _, where = run.stdout.split()
    assert int(count) == 14 and where.endswith("mkviz/_data/checkpoints")
    assert "mkviz/viz/assets/explorer.js" in names and "mkviz/viz/assets/explorer.css" in names
    # the demo itself, from the installed command, outside the clone (a small evaluation: 100 test images)
    demo = subprocess.run([str(venv / "bin" / "mkviz"), "demo", "--no-train", "--images", "1", "--test-images", "100",
                           "--threads", "1", "--out", "report"], cwd=outside, env={**env, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True)
    assert demo.returncode == 0, demo.stderr[-2000:]
    report = (outside / "report" / "report.html").read_text()
    assert "mkviz-explorer" in report and all(name in report for name in ("baseline", "vanillak-8", "kua-8"))
