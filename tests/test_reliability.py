"""Reliability: every bad input gets one clear error line naming the argument (and the allowed values), and
nothing a user saved is overwritten. Each case is driven through the CLI (in process, as `mkviz.cli.main`, and a
few as real subprocesses) or the API; the user's files are compared byte for byte before and after."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mkviz import checkpoint as ckpt
from mkviz.apps.cli import main as cli_main
from mkviz.training.loop import train
from mkviz.training.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT),
       "PYTHONWARNINGS": "ignore"}
ENV.pop("WORLD_SIZE", None)
ENV.pop("RANK", None)
# a 2-block ViT on 32-px shapes, 2 steps per epoch
MICRO = ["--preset", "micro", "--num-train", "64", "--num-val", "32", "--num-test", "0", "--batch-size", "32",
         "--epochs", "2", "--quiet"]


pytestmark = pytest.mark.usefixtures("one_thread")


def mkviz(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str]:
    """(exit status, stderr) of `mkviz ARGV` run in this process."""
    capsys.readouterr()
    code = cli_main(list(argv))
    return code, capsys.readouterr().err


def mkviz_subprocess(*argv: str) -> tuple[int, str]:
    done = subprocess.run([sys.executable, "-m", "mkviz.cli", *argv], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=300)
    return done.returncode, done.stderr


def assert_one_line(code: int, err: str, *words: str) -> str:
    """Exit status 2, no traceback, one line `mkviz <command>: error: ...` holding every word."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and "Traceback" not in err and len(lines) == 1, (code, err)
    assert lines[0].startswith("mkviz ") and ": error: " in lines[0], lines[0]
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (relative path -> bytes)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def micro_run(out: Path, **kw) -> Path:
    """An unfinished micro run (3 of 4 steps, a checkpoint every step, the last two kept)."""
    fields = dict(preset="micro", num_train=64, num_val=32, num_test=0, batch_size=32, epochs=2, out=str(out),
                  quiet=True, variant="vanillak", num_charts=2, save_every_steps=1, max_steps=3)
    train(TrainConfig(**{**fields, **kw}))
    return out


def resume_args(out: Path, charts: int = 2) -> list[str]:
    return ["train", *MICRO, "--variant", "vanillak", "--num-charts", str(charts), "--save-every-steps", "1",
            "--out", str(out), "--resume"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Two unfinished runs, of 2 and 4 charts (copied by each test that changes one)."""
    root = tmp_path_factory.mktemp("runs")
    return {"vk2": micro_run(root / "vk2"), "vk4": micro_run(root / "vk4", num_charts=4)}


def copy_run(runs: dict[str, Path], name: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(runs[name], tmp_path / name))


# ----------------------------------------------------------------------------- mkviz train: paths
@pytest.mark.parametrize("where", ["file", "below a file"])
def test_train_out_or_export_on_a_file_is_one_line(tmp_path, capsys, where):
    user = tmp_path / "notes.txt"
    user.write_text("mine\n")
    target = user if where == "file" else user / "run"
    for flag, extra in (("--out", []), ("--export", ["--out", str(tmp_path / "run")])):
        code, err = mkviz(capsys, "train", *MICRO, *extra, flag, str(target))
        assert_one_line(code, err, flag, str(target), "must be a folder")
    assert user.read_text() == "mine\n"
    assert not (tmp_path / "run").exists()


def test_train_export_never_replaces_another_checkpoint(tmp_path, capsys, runs):
    shipped = tmp_path / "shipped"
    ckpt.export_checkpoint(runs["vk4"], shipped)
    before = snapshot(shipped)
    out = tmp_path / "run"
    code, err = mkviz(capsys, "train", *MICRO, "--out", str(out), "--export", str(shipped))
    assert_one_line(code, err, "--export", str(shipped), "--overwrite")
    assert snapshot(shipped) == before and not out.exists()
    # --overwrite is the way through
    code, err = mkviz(capsys, "train", *MICRO, "--max-steps", "4", "--out", str(out), "--export", str(shipped),
                      "--overwrite")
    assert code == 0, err
    assert ckpt.read_json(shipped / ckpt.CONFIG_FILE)["model_spec"]["variant"] == "baseline"


@pytest.mark.parametrize("user_file", ["results.json", ckpt.MODEL_FILE])
def test_train_out_keeps_the_users_results_and_exported_checkpoints(tmp_path, capsys, runs, user_file):
    out = tmp_path / "mine"
    if user_file == ckpt.MODEL_FILE:  # a checkpoint in the shipped format (model.safetensors + config.json)
        ckpt.export_checkpoint(runs["vk2"], out)
    else:
        out.mkdir()
        (out / user_file).write_text('{"my": "results"}\n')
    before = snapshot(out)
    code, err = mkviz(capsys, "train", *MICRO, "--out", str(out))
    assert_one_line(code, err, "--out", str(out), user_file, "--overwrite")
    assert snapshot(out) == before
    code, err = mkviz(capsys, "train", *MICRO, "--max-steps", "1", "--out", str(out), "--overwrite")
    assert code == 0, err
    assert not (out / ckpt.MODEL_FILE).exists() and (out / ckpt.LATEST_FILE).is_file()  # nothing mixed in


# ----------------------------------------------------------------------------- mkviz train: devices and numbers
@pytest.mark.parametrize("device", ["tpu", "meta", "cuda:x"])
def test_train_unknown_device_is_one_line(tmp_path, capsys, device):
    code, err = mkviz(capsys, "train", *MICRO, "--device", device, "--out", str(tmp_path / "run"))
    assert_one_line(code, err, "--device", repr(device), "cpu, cuda, cuda:N")
    assert not (tmp_path / "run").exists()


def test_train_cuda_without_a_gpu_says_so(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device in ("cuda", "cuda:1"):
        code, err = mkviz(capsys, "train", *MICRO, "--device", device, "--out", str(tmp_path / "run"))
        assert_one_line(code, err, f"--device {device}", "CUDA is not available", "--device cpu")


@pytest.mark.parametrize("flag, value", [("--lr", "inf"), ("--lr", "nan"), ("--ua-weight", "inf"),
                                         ("--ua-weight", "nan"), ("--weight-decay", "-1"), ("--grad-clip", "inf")])
def test_train_non_finite_numbers_are_one_line(tmp_path, capsys, flag, value):
    code, err = mkviz(capsys, "train", *MICRO, "--variant", "kua", flag, value, "--out", str(tmp_path / "run"))
    assert_one_line(code, err, flag[2:], "finite number")


# ----------------------------------------------------------------------------- mkviz train --resume
def test_resume_with_weights_or_optimiser_state_of_another_shape_is_one_line(tmp_path, capsys, runs):
    four = ckpt.find_checkpoint(runs["vk4"])
    for name in (ckpt.MODEL_FILE, ckpt.OPTIM_FILE):  # a 4-chart file in a 2-chart run
        out = copy_run(runs, "vk2", tmp_path / name)
        latest = ckpt.find_checkpoint(out)
        shutil.copyfile(four / name, latest / name)
        before = snapshot(out)
        code, err = mkviz(capsys, *resume_args(out))
        line = assert_one_line(code, err, "--resume", str(latest), "does not fit", "vanillak with 2 charts")
        assert "shape" in line
        assert snapshot(out) == before


def test_resume_with_missing_weights_names_the_file_and_the_intact_previous_checkpoint(tmp_path, capsys, runs):
    out = copy_run(runs, "vk2", tmp_path)
    old, latest = ckpt.list_checkpoints(out)
    (latest / ckpt.MODEL_FILE).unlink()
    before = snapshot(out)
    code, err = mkviz(capsys, *resume_args(out))
    assert_one_line(code, err, "--resume", f"{latest / ckpt.MODEL_FILE} not found", f"previous checkpoint {old}",
                    f"delete {latest}")
    assert snapshot(out) == before
    # the API says which file is missing, not that the directory is
    with pytest.raises(ckpt.CheckpointError, match=f"{latest.name} has no {ckpt.MODEL_FILE}"):
        ckpt.find_checkpoint(out)


def test_resume_from_a_corrupt_latest_checkpoint_names_the_intact_previous_one_then_uses_it(tmp_path, capsys, runs):
    out = copy_run(runs, "vk2", tmp_path)
    old, latest = ckpt.list_checkpoints(out)
    data = (latest / ckpt.MODEL_FILE).read_bytes()
    (latest / ckpt.MODEL_FILE).write_bytes(data[: len(data) // 2])
    before = snapshot(out)
    code, err = mkviz(capsys, *resume_args(out))
    assert_one_line(code, err, "--resume", "corrupt", str(latest), f"previous checkpoint {old} is intact",
                    f"delete {latest}", "--resume")
    assert snapshot(out) == before
    # following the advice: the run continues from the previous checkpoint, and says so
    shutil.rmtree(latest)
    code, err = mkviz(capsys, *resume_args(out))
    assert code == 0, err
    assert f"resuming from {old}" in err and "Traceback" not in err
    assert ckpt.read_json(ckpt.find_checkpoint(out) / ckpt.STATE_FILE)["step"] == 4


def test_resume_refuses_a_corrupt_run_json(tmp_path, capsys, runs):
    out = copy_run(runs, "vk2", tmp_path)
    (out / "run.json").write_text('{"train": {"epochs"')
    before = snapshot(out)
    code, err = mkviz(capsys, *resume_args(out))
    assert_one_line(code, err, "--resume", str(out / "run.json"), "corrupt", "--overwrite")
    assert snapshot(out) == before


def test_cases_already_handled_stay_handled(tmp_path, capsys, runs):
    out = copy_run(runs, "vk2", tmp_path)
    before = snapshot(out)
    code, err = mkviz(capsys, "train", *MICRO, "--variant", "vanillak", "--num-charts", "2", "--out", str(out))
    assert_one_line(code, err, "already holds", "--resume", "--overwrite")
    code, err = mkviz(capsys, *resume_args(out, charts=4))
    assert_one_line(code, err, "--resume", "num_charts=2")
    code, err = mkviz(capsys, "train", *MICRO, "--resume", "--out", str(tmp_path / "nothing"))
    assert_one_line(code, err, "--resume", "no checkpoint")
    assert snapshot(out) == before


@pytest.mark.slow
def test_train_errors_as_a_real_subprocess(tmp_path):
    user = tmp_path / "notes.txt"
    user.write_text("mine\n")
    for argv, words in ((["--out", str(user)], ["--out", "is a file"]),
                        (["--device", "tpu", "--out", str(tmp_path / "r")], ["--device", "'tpu'"])):
        code, err = mkviz_subprocess("train", *MICRO, *argv)
        assert_one_line(code, err, *words)
    assert user.read_text() == "mine\n"



# ----------------------------------------------------------------------------- convert()
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -0.1])
def test_convert_refuses_a_non_finite_or_negative_perturbation(value):
    from conftest import small_vit
    from mkviz import convert
    for init in ("preserve", "scratch"):
        with pytest.raises(ValueError, match=r"perturbation must be a finite float >= 0"):
            convert(small_vit(), "vanillak", 2, perturbation=value, init=init)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1.0])
def test_convert_refuses_a_non_finite_or_negative_ua_weight(value):
    from conftest import small_vit
    from mkviz import convert, create_model
    with pytest.raises(ValueError, match=r"ua_weight must be a finite float >= 0"):
        convert(small_vit(), "kua", 2, ua_weight=value)
    with pytest.raises(ValueError, match=r"ua_weight must be a finite float >= 0"):
        create_model("vit_tiny_patch16_224", "kua", 2, ua_weight=value, img_size=32, patch_size=8, embed_dim=32,
                     depth=1, num_heads=2)


def test_convert_reports_a_perturbation_too_large_to_preserve_the_function():
    from conftest import small_vit
    from mkviz import convert
    model = small_vit().eval()
    for variant in ("vanillak", "kua"):
        with pytest.raises(ValueError, match=r"blocks\.0\.attn: perturbation=1e\+08 is too large"):
            convert(model, variant, 4, perturbation=1e8)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():  # a large but workable perturbation is still accepted and preserves the outputs
        assert torch.allclose(convert(model, "vanillak", 4, perturbation=10.0).eval()(x), model(x), atol=1e-4)


# ----------------------------------------------------------------------------- mkviz sweep
def _sweep_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(text)
    return path


SWEEP = """name: s
results_dir: {tmp}/res
runs_dir: {tmp}/runs
common: {common}
datasets: {{shapes: {{dataset: shapes}}}}
configs: {{baseline: {{variant: baseline}}, vk: {{variant: {variant}, num_charts: 2}}}}
"""


@pytest.mark.parametrize("common, variant, words", [
    ("{preset: micro, colour: red}", "vanillak", ["common: unknown fields ['colour']", "allowed:"]),
    ("{preset: micro}", "wrongk", ["variant must be one of baseline, vanillak", "'wrongk'"]),
    ("{preset: micro", "vanillak", ["not valid YAML at line 5, column 9", "expected"]),
])
def test_sweep_file_errors_are_one_clear_line(tmp_path, capsys, common, variant, words):
    path = _sweep_file(tmp_path, SWEEP.format(tmp=tmp_path, common=common, variant=variant))
    code, err = mkviz(capsys, "sweep", str(path), "--list")
    line = assert_one_line(code, err, "mkviz sweep: error: sweep", *words)
    assert "common.common" not in line



# ----------------------------------------------------------------------------- data, demo, report
def test_cifar_error_names_the_cli_flag(tmp_path, capsys):
    code, err = mkviz(capsys, "train", *MICRO, "--dataset", "cifar10", "--data-root", str(tmp_path),
                      "--out", str(tmp_path / "run"))
    assert_one_line(code, err, "cifar10 not found", "--download")


@pytest.mark.parametrize("argv, words", [
    (["--data-root", "{tmp}/images"], ["--data-root", "--pretrained"]),
    (["--data-root", "{tmp}/missing"], ["--data-root", "--pretrained"]),
    (["--variant", "kua", "--num-charts", "4"], ["--variant, --num-charts", "--pretrained"]),
    (["--checkpoints", "{tmp}/missing"], ["--checkpoints", "does not exist"]),
    (["--out", "{tmp}/notes.txt"], ["--out", "is a file"]),
    (["--out", "{tmp}/notes.txt/demo"], ["--out", "lies below the file"]),
])
def test_demo_bad_arguments_are_one_line(tmp_path, capsys, argv, words):
    (tmp_path / "images").mkdir()
    (tmp_path / "notes.txt").write_text("mine\n")
    argv = [a.format(tmp=tmp_path) for a in argv]
    code, err = mkviz(capsys, "demo", "--no-train", *argv)
    assert_one_line(code, err, "mkviz demo: error:", *words)
    assert (tmp_path / "notes.txt").read_text() == "mine\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "notes.txt"]


@pytest.mark.parametrize("argv, words", [
    (["demo", "--images", "many"], ["mkviz demo: error:", "--images", "invalid int value: 'many'"]),
    (["bench", "run", "--batch-size", "x"], ["mkviz bench: error:", "--batch-size", "invalid int value"]),
    (["bench", "nope"], ["mkviz bench: error:", "invalid choice: 'nope'", "'run'"]),
    (["sweep", "s.yaml", "--jobs", "two"], ["mkviz sweep: error:", "--jobs", "invalid int value"]),
])
def test_argument_parsing_errors_are_one_line_in_every_command(capsys, argv, words):
    assert_one_line(*mkviz(capsys, *argv), *words)


def test_report_html_is_written_with_the_usual_permissions(tmp_path):
    from mkviz.viz.report import Report
    umask = os.umask(0o022)
    os.umask(umask)
    path = Report("r").write(tmp_path / "report.html")
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]  # no temp file left


def _fake_summary() -> tuple[dict, dict]:
    sweep = {"baseline": "baseline", "configs": {"baseline": {"variant": "baseline"},
                                                 "vanillak-2": {"variant": "vanillak", "num_charts": 2},
                                                 "vanillak-4": {"variant": "vanillak", "num_charts": 4}}}
    row = lambda v, h, accs: {"n": len(accs), "accs": dict(enumerate(accs)), "mean": sum(accs) / len(accs),  # noqa: E731
                              "std": 0.01, "params": 1000, "flops": 2e6, "variant": v, "num_charts": h}
    summary = {"shapes": {"baseline": row("baseline", None, [0.8, 0.82]),
                          "vanillak-2": row("vanillak", 2, [0.83, 0.85]), "vanillak-4": row("vanillak", 4, [0.84, 0.8])}}
    return sweep, summary


@pytest.mark.slow
def test_sweep_svg_plots_are_byte_identical_across_renders():
    from mkviz import sweep_report
    sweep, summary = _fake_summary()
    fig = sweep_report.make_plots(sweep, summary)["acc_vs_charts"]
    try:
        first = sweep_report.svg_bytes(fig)
    except Exception as err:  # noqa: BLE001
        pytest.skip(f"SVG export skipped: kaleido/Chromium cannot render here ({type(err).__name__}: "
                    f"{str(err).splitlines()[0][:120] if str(err) else ''})")
    assert sweep_report.svg_bytes(fig) == first
    assert b"clipmkviz" in first and b"<svg" in first[:200]
