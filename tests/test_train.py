"""Training loop, checkpoints (safetensors/json only, atomic, exact resume), DDP equivalence, CLI errors."""
from __future__ import annotations

import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mkviz import checkpoint as ckpt
from mkviz.training.build import load_checkpoint
from mkviz.training.loop import evaluate, lr_at, train
from mkviz.training.inputs import EpochBatchSampler
from mkviz.training.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT),
       "PYTHONWARNINGS": "ignore"}
ENV.pop("WORLD_SIZE", None)
ENV.pop("RANK", None)

# a 2-block ViT on 32-px shapes (micro preset) and a run small enough for a few CPU seconds
MICRO = ["--preset", "micro", "--num-val", "64", "--num-test", "0", "--quiet"]


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mkviz.cli", "train", *args], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


def small_cfg(out: Path, **kw) -> TrainConfig:
    base = dict(preset="micro", num_train=64, num_val=32, num_test=0, epochs=1, batch_size=32, out=str(out),
                quiet=True)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def vk8_run(tmp_path_factory) -> Path:
    """A finished VanillaK-8 micro run (its directory)."""
    out = tmp_path_factory.mktemp("vk8") / "run"
    train(small_cfg(out, variant="vanillak", num_charts=8))
    return out


# ----------------------------------------------------------------------------- units
def test_sampler_is_a_function_of_seed_and_epoch_and_shards_the_global_batch():
    one = list(EpochBatchSampler(100, 8, seed=3, epoch=2))
    assert one == list(EpochBatchSampler(100, 8, seed=3, epoch=2))
    assert one != list(EpochBatchSampler(100, 8, seed=3, epoch=1))
    assert len(one) == 12 and all(len(b) == 8 for b in one)
    # two ranks with b = 4: batch s of rank 0 followed by batch s of rank 1 is global batch s
    r0 = list(EpochBatchSampler(100, 4, seed=3, epoch=2, rank=0, world_size=2))
    r1 = list(EpochBatchSampler(100, 4, seed=3, epoch=2, rank=1, world_size=2))
    assert [a + b for a, b in zip(r0, r1)] == one
    # resuming skips the batches already done
    assert list(EpochBatchSampler(100, 8, seed=3, epoch=2, start=5)) == one[5:]


def test_lr_schedule_warmup_then_cosine():
    lrs = [lr_at(s, 100, 1e-3, 1e-5, 10) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    assert lr_at(100, 100, 1e-3, 1e-5, 10) == pytest.approx(1e-5)


def test_optimizer_state_roundtrip_through_safetensors(tmp_path):
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.randn(5, 4)).sum().backward()
    opt.step()
    tensors, meta = ckpt.optimizer_to_tensors(opt)
    ckpt.save_tensors(tmp_path / "o.safetensors", tensors)
    ckpt.atomic_write_json(tmp_path / "o.json", meta)
    opt2 = torch.optim.AdamW(torch.nn.Linear(4, 3).parameters(), lr=1.0)
    loaded, _ = ckpt.load_tensors(tmp_path / "o.safetensors")
    ckpt.optimizer_from_tensors(opt2, loaded, ckpt.read_json(tmp_path / "o.json"))
    a, b = opt.state_dict(), opt2.state_dict()
    assert a["param_groups"][0]["lr"] == b["param_groups"][0]["lr"] == 1e-2
    for i in a["state"]:
        for k, v in a["state"][i].items():
            assert torch.equal(v, b["state"][i][k])


def test_atomic_write_leaves_old_file_when_interrupted(tmp_path, monkeypatch):
    target = tmp_path / "x.json"
    ckpt.atomic_write_json(target, {"a": 1})

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        ckpt.atomic_write_json(target, {"a": 2})
    assert ckpt.read_json(target) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]  # the temp file was removed


def test_rng_state_roundtrip_is_json():
    torch.manual_seed(5)
    state = json.loads(json.dumps(ckpt.rng_state()))
    a = torch.rand(3)
    ckpt.set_rng_state(state)
    assert torch.equal(a, torch.rand(3))


# ----------------------------------------------------------------------------- training
pytestmark = pytest.mark.usefixtures("one_thread")  # reproducible numbers, no oversubscription


@pytest.mark.slow
def test_tiny_run_learns_and_logs(tmp_path):
    # 2 blocks of width 64 on 32-px shapes; the relation task has a plateau of a few thousand samples at
    # chance before it is learned, so 2 epochs of 2000 images (250 steps) only just leave it
    out = tmp_path / "run"
    result = train(TrainConfig(preset="micro", num_train=2000, num_val=256, num_test=256, epochs=2, batch_size=16,
                               lr=1e-3, out=str(out), quiet=True, timm_kwargs={"embed_dim": 64, "num_heads": 4}))
    hist = result["history"]
    assert len(hist) == 2
    assert hist[1]["train_loss"] < hist[0]["train_loss"] < 1.41
    # chance is 0.25 (sd 0.027 for 256 images); this seed reaches 0.39 on val
    assert hist[1]["val_acc"] > 0.33 and hist[1]["val_loss"] < hist[0]["val_loss"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows == [{k: v for k, v in h.items()} for h in hist]
    assert set(rows[0]) >= {"epoch", "step", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "time"}
    # the final model reloads from safetensors + json alone and gives the reported accuracy
    model, config = load_checkpoint(out / "final")
    assert config["model_spec"]["variant"] == "baseline" and config["metrics"]["test"]["acc"] > 0.25
    from mkviz.training.inputs import build_datasets
    ds = build_datasets(TrainConfig(**config["train"]).resolved(), model, ("val",))["val"]
    acc = evaluate(model, torch.utils.data.DataLoader(ds, batch_size=64))["acc"]
    assert acc == pytest.approx(hist[-1]["val_acc"])


def test_kua_adds_the_unbalanced_atlas_term_and_checkpoints_load_without_pickle(tmp_path, monkeypatch):
    out = tmp_path / "kua"
    result = train(small_cfg(out, variant="kua", num_charts=4, ua_weight=0.5, save_every_steps=1, num_train=96))
    assert result["history"][0]["ua_loss"] < 0  # -λ Σ (p - 1/H)²
    files = [p for p in out.rglob("*") if p.is_file()]
    assert files and all(p.suffix in (".safetensors", ".json", ".jsonl") for p in files), files

    def no_pickle(*a, **k):
        raise AssertionError("pickle used")

    monkeypatch.setattr(pickle, "load", no_pickle)
    monkeypatch.setattr(pickle, "loads", no_pickle)
    monkeypatch.setattr(torch, "load", no_pickle)
    for d in ckpt.list_checkpoints(out) + [out / "final"]:
        model, config = load_checkpoint(d)
        assert config["model_spec"]["variant"] == "kua" and config["model_spec"]["num_charts"] == 4
    assert len(ckpt.list_checkpoints(out)) == 2  # keep_last


def _run_cmd(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "mkviz.cli", "train", *MICRO, "--num-train", "480", "--batch-size", "16",
            "--epochs", "2", "--variant", "vanillak", "--num-charts", "4", "--seed", "7", "--out", str(out), *extra]


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_gives_bitwise_the_same_weights(tmp_path):
    ref = tmp_path / "ref"
    done = subprocess.run(_run_cmd(ref), cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr

    out = tmp_path / "killed"
    proc = subprocess.Popen(_run_cmd(out, "--save-every-steps", "4"), cwd=ROOT, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (out / ckpt.LATEST_FILE).exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    time.sleep(0.3)  # let it get into a later step (maybe in the middle of writing a checkpoint)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (out / "final").exists()
    state = ckpt.read_json(ckpt.find_checkpoint(out) / ckpt.STATE_FILE)
    assert state["step"] < 60

    resumed = subprocess.run(_run_cmd(out, "--save-every-steps", "4", "--resume"), cwd=ROOT, env=ENV,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    for d in ckpt.list_checkpoints(out) + [out / "final"]:  # everything left there loads
        ckpt.load_tensors(d / ckpt.MODEL_FILE)
        ckpt.read_json(d / ckpt.CONFIG_FILE)
        if (d / ckpt.OPTIM_FILE).exists():
            ckpt.load_tensors(d / ckpt.OPTIM_FILE)
            ckpt.read_json(d / ckpt.STATE_FILE)
    a, _ = ckpt.load_tensors(ref / "final" / ckpt.MODEL_FILE)
    b, _ = ckpt.load_tensors(out / "final" / ckpt.MODEL_FILE)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    ra = [json.loads(x) for x in (ref / "metrics.jsonl").read_text().splitlines()]
    rb = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    strip = lambda rows: [{k: v for k, v in r.items() if k != "time"} for r in rows]  # noqa: E731
    assert strip(ra) == strip(rb)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_torchrun_two_processes_match_one_process_with_the_doubled_batch(tmp_path):
    common = [*MICRO, "--num-train", "256", "--epochs", "1", "--max-steps", "6", "--log-every", "1", "--seed", "3",
              "--variant", "simplek", "--num-charts", "2"]
    one = cli(*common, "--batch-size", "32", "--out", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
                          "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
                          "-m", "mkviz.train", *common, "--batch-size", "16", "--out", str(tmp_path / "two")],
                         cwd=ROOT, env={**ENV, "GLOO_SOCKET_IFNAME": ENV.get("GLOO_SOCKET_IFNAME", "lo")},
                         capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    la = [json.loads(x)["loss"] for x in (tmp_path / "one" / "steps.jsonl").read_text().splitlines()]
    lb = [json.loads(x)["loss"] for x in (tmp_path / "two" / "steps.jsonl").read_text().splitlines()]
    assert len(la) == len(lb) == 6
    assert la[0] != la[-1]
    assert lb == pytest.approx(la, rel=1e-4)
    wa, _ = ckpt.load_tensors(ckpt.find_checkpoint(tmp_path / "one") / ckpt.MODEL_FILE)
    wb, _ = ckpt.load_tensors(ckpt.find_checkpoint(tmp_path / "two") / ckpt.MODEL_FILE)
    assert all(torch.allclose(wa[k], wb[k], rtol=1e-3, atol=1e-5) for k in wa)
    assert ckpt.read_json(ckpt.find_checkpoint(tmp_path / "two") / ckpt.STATE_FILE)["world_size"] == 2


# ----------------------------------------------------------------------------- bad input: one line, no traceback
@pytest.mark.slow
def test_cli_errors_are_one_clear_line(tmp_path, vk8_run, capsys):
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    src = ckpt.find_checkpoint(vk8_run)
    data = (src / ckpt.MODEL_FILE).read_bytes()
    (corrupt / ckpt.MODEL_FILE).write_bytes(data[: len(data) // 2])
    (corrupt / ckpt.CONFIG_FILE).write_bytes((src / ckpt.CONFIG_FILE).read_bytes())
    empty = tmp_path / "empty"
    (empty / "cat").mkdir(parents=True)
    out = str(tmp_path / "new")
    cases = {
        "missing checkpoint": (["--init-from", str(tmp_path / "nope"), "--out", out], ["checkpoint", "not found"]),
        "corrupt checkpoint": (["--init-from", str(corrupt), "--variant", "vanillak", "--out", out],
                               ["corrupt checkpoint"]),
        "variant mismatch": (["--init-from", str(vk8_run), "--variant", "kua", "--num-charts", "4", "--out", out],
                             ["variant mismatch", "vanillak with 8 charts", "kua with 4 charts"]),
        "resume mismatch": (["--resume", "--out", str(vk8_run), "--num-train", "64", "--num-val", "32",
                             "--batch-size", "32", "--epochs", "1", "--variant", "kua", "--num-charts", "4"],
                            ["resume", "variant='vanillak'", "num_charts=8"]),
        "existing run": (["--out", str(vk8_run), "--variant", "vanillak"], ["already holds", "--resume"]),
        "no data folder": (["--dataset", "imagefolder", "--data-root", str(tmp_path / "nowhere"), "--out", out],
                           ["does not exist"]),
        "no images": (["--dataset", "imagefolder", "--data-root", str(empty), "--out", out], ["no images"]),
        "unknown model": (["--model", "vit_nonexistent_42", "--out", out], ["unknown timm model"]),
        "batch size 0": (["--batch-size", "0", "--out", out], ["batch-size", ">= 1"]),
        "negative epochs": (["--epochs", "-3", "--out", out], ["epochs", ">= 1"]),
        "bad lr": (["--lr", "0", "--out", out], ["lr", "> 0"]),
        "not a number": (["--batch-size", "many", "--out", out], ["batch-size", "invalid int"]),
    }
    # the first six run as real subprocesses (in parallel), the rest through mkviz.cli.main in this process
    names = list(cases)
    procs = {name: subprocess.Popen([sys.executable, "-m", "mkviz.cli", "train", *MICRO, *cases[name][0]], cwd=ROOT,
                                    env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name in names[:6]}
    results = {name: (proc.communicate(timeout=300)[1], proc.returncode) for name, proc in procs.items()}
    from mkviz.apps.cli import main as cli_main
    for name in names[6:]:
        capsys.readouterr()
        code = cli_main(["train", *MICRO, *cases[name][0]])
        results[name] = (capsys.readouterr().err, code)
    for name, (err, code) in results.items():
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert code == 2, (name, err)
        assert "Traceback" not in err and len(lines) == 1, (name, err)
        for word in cases[name][1]:
            assert word in lines[0], (name, word, lines[0])
    assert not Path(out).exists() or not ckpt.list_checkpoints(out)


def test_init_from_baseline_converts_function_preservingly(tmp_path):
    base = tmp_path / "base"
    train(small_cfg(base))
    model, _ = load_checkpoint(base)
    res = train(small_cfg(tmp_path / "vk", variant="vanillak", num_charts=3, init_from=str(base), lr=1e-12,
                          min_lr=0.0, weight_decay=0.0, max_steps=1))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(res["model"].eval()(x), model(x), atol=1e-4)


# ----------------------------------------------------------------------------- help
def test_help_says_each_default_once_and_truly(capsys, monkeypatch):
    """`mkviz train --help`: every option has help; no default is printed twice or as a bare None; the
    store_false --no-optimizer-state does not claim a True/False default that contradicts its effect."""
    import re

    from mkviz.apps.cli import main as cli_main
    from mkviz.training.command import make_parser

    monkeypatch.setenv("COLUMNS", "100")  # a fixed width: the help wraps the same way everywhere
    with pytest.raises(SystemExit) as exit_:
        cli_main(["train", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert not [ln for ln in lines if ln.lower().count("default") > 1]
    assert "(default: None)" not in " ".join(text.split())  # also when wrapped between "default:" and "None)"
    # each option's help as one string: its first line (starting "  -") and the more indented ones after it
    blocks: dict[str, str] = {}
    current = None
    for ln in lines:
        if re.match(r"^  -", ln):
            current = ln.split()[0].rstrip(",")
            blocks[current] = ln
        elif current is not None and re.match(r"^ {6,}\S", ln):
            blocks[current] += " " + ln.strip()
        else:
            current = None
    assert all(block.lower().count("default") <= 1 for block in blocks.values()), blocks
    no_state = " ".join(blocks["--no-optimizer-state"].split())
    assert not re.search(r"default:?\s*(True|False)", no_state, re.I), no_state
    assert "resumed" in no_state
    for action in make_parser()._actions:
        for option in action.option_strings:
            assert action.help and action.help.strip() and action.help != "==SUPPRESS==", option
            assert option in text, option
