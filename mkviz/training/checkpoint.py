"""Checkpoints without pickle: safetensors for tensors, JSON for everything else, atomic writes.

A checkpoint is a directory::

    model.safetensors      the weights (the model spec is also in its metadata under "mkviz_config")
    config.json            the TrainConfig and the model spec (what `load_checkpoint` rebuilds from)
    optimizer.safetensors  AdamW state tensors, flattened as "state.<param index>.<name>"  (training only)
    state.json             progress: epoch, step, batch within the epoch, RNG states (base64 of the raw
                           bytes), optimiser scalars and param groups, running metrics   (training only)

Every file is written to a temporary file in the same directory, flushed, fsynced and moved into
place with `os.replace`; a training checkpoint directory is assembled under a temporary name and
renamed only when complete, and `latest.json` (the pointer to the newest checkpoint) is replaced
atomically last. A crash (even SIGKILL) therefore leaves either the previous checkpoint or the new
one, never a half-written file that looks valid.

Loading uses `safetensors` and `json` only. An exported checkpoint (`export_checkpoint`, what
`data/checkpoints/` ships) keeps only model.safetensors and config.json; `shipped_checkpoints_dir` finds the
repository's `data/checkpoints`. This module reads and writes files only; `mkviz.training.build` makes models
(`build_model` from a spec, `load_checkpoint` from a checkpoint folder).
"""
from __future__ import annotations

import base64
import importlib.resources
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional, TextIO

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as st_load_bytes
from safetensors.torch import save as st_save_bytes

__all__ = [
    "CheckpointError", "atomic_write_bytes", "atomic_write_json", "save_tensors", "load_tensors", "read_json",
    "optimizer_to_tensors", "optimizer_from_tensors", "rng_state", "set_rng_state", "write_checkpoint_dir",
    "find_checkpoint", "list_checkpoints", "export_checkpoint", "check_checkpoint", "resume_checkpoint",
    "check_output_dir", "MODEL_FILE", "CONFIG_FILE", "OPTIM_FILE", "STATE_FILE", "LATEST_FILE", "CKPT_DIR",
    "shipped_checkpoints_dir",
]


MODEL_FILE, CONFIG_FILE, OPTIM_FILE, STATE_FILE = "model.safetensors", "config.json", "optimizer.safetensors", "state.json"

LATEST_FILE, CKPT_DIR = "latest.json", "checkpoints"

TMP_PREFIX = ".tmp-"

# the small checkpoints the repository ships, beside the package (an editable install from a clone)
_PACKAGE_CHECKPOINTS = Path(__file__).resolve().parents[2] / "data" / "checkpoints"

def shipped_checkpoints_dir() -> Path:
    """The repository's `data/checkpoints/` folder: under $MKVIZ_ROOT if set, else in the first folder
    upwards from the working directory with a pyproject.toml and a data/checkpoints folder, else beside the
    package    (a clone), else the copy an installed wheel carries (`mkviz/_data/checkpoints`)."""
    if os.environ.get("MKVIZ_ROOT"):
        return Path(os.environ["MKVIZ_ROOT"]).resolve() / "data" / "checkpoints"
    for folder in (Path.cwd(), *Path.cwd().parents):
        if (folder / "pyproject.toml").is_file() and (folder / "data" / "checkpoints").is_dir():
            return folder / "data" / "checkpoints"
    if _PACKAGE_CHECKPOINTS.is_dir():
        return _PACKAGE_CHECKPOINTS
    installed = Path(str(importlib.resources.files(__name__.partition(".")[0]) / "_data" / "checkpoints"))
    if installed.is_dir():  # an installed wheel carries them (pyproject.toml's package-dir)
        return installed
    raise FileNotFoundError("cannot find the mkviz repository's data/checkpoints: set MKVIZ_ROOT to the "
                            "repository root")

_UMASK = os.umask(0)

os.umask(_UMASK)

class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt or does not match what was asked (one clear message)."""

# ----------------------------------------------------------------------------- atomic writes
def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:  # e.g. Windows: directories cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)

def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically: temp file in the same directory, fsync, os.replace, fsync dir."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX + path.name + ".", dir=str(path.parent))
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)

def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())

def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor],
                 metadata: Optional[dict[str, str]] = None) -> None:
    """Atomically write `tensors` (made contiguous, on CPU) as safetensors with string `metadata`."""
    clean = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    atomic_write_bytes(path, st_save_bytes(clean, metadata=metadata))

def _describe(path: Path) -> str:
    return f"{path} ({path.stat().st_size} bytes)" if path.exists() else str(path)

def load_tensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a safetensors file; CheckpointError if it is missing or corrupt."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} not found")
    data = path.read_bytes()
    try:
        tensors = st_load_bytes(data)
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + header_len])
    except (SafetensorError, ValueError, OSError, RuntimeError) as err:
        raise CheckpointError(f"corrupt checkpoint {_describe(path)}: not a valid safetensors file "
                              f"({str(err).splitlines()[0] if str(err) else type(err).__name__})") from None
    return tensors, dict(header.get("__metadata__") or {})

def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} not found")
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise CheckpointError(f"corrupt checkpoint {_describe(path)}: not valid JSON ({err})") from None

# ----------------------------------------------------------------------------- optimiser state
def optimizer_to_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Flatten `optimizer.state_dict()`: tensors -> {"state.<i>.<name>": tensor}, the rest -> JSON dict."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for name, value in st.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{idx}.{name}"] = value
            else:
                scalars.setdefault(str(idx), {})[name] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}

def optimizer_from_tensors(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                           meta: dict[str, Any]) -> None:
    """Inverse of `optimizer_to_tensors`: load the state into `optimizer`."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = value
    for idx, st in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(st)
    groups = meta["param_groups"]
    if len(groups) != len(optimizer.param_groups) or any(
            len(g["params"]) != len(h["params"]) for g, h in zip(groups, optimizer.param_groups)):
        raise CheckpointError("optimizer state in the checkpoint does not match this model's parameters")
    params = {i: p for g, h in zip(groups, optimizer.param_groups) for i, p in zip(g["params"], h["params"])}
    for idx, st in state.items():
        for name, value in st.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and idx in params \
                    and value.shape != params[idx].shape:
                raise CheckpointError(f"optimizer state {name} of parameter {idx} has shape {tuple(value.shape)}, "
                                      f"the model's parameter has {tuple(params[idx].shape)}")
    optimizer.load_state_dict({"state": state, "param_groups": groups})

# ----------------------------------------------------------------------------- RNG states
def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode("ascii")

def _unb64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8).clone()

def rng_state() -> dict[str, Any]:
    """torch CPU (and CUDA) generator states as base64 of their raw bytes (JSON-safe, no pickle)."""
    out: dict[str, Any] = {"torch": _b64(torch.get_rng_state())}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return out

def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(_unb64(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        states = [_unb64(s) for s in state["cuda"]]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)

# ----------------------------------------------------------------------------- checkpoint directories
def _model_metadata(config: dict[str, Any]) -> dict[str, str]:
    return {"format": "mkviz", "mkviz_config": json.dumps(config, sort_keys=True)}

def write_checkpoint_dir(run_dir: str | os.PathLike, name: str, model_state: dict[str, torch.Tensor],
                         config: dict[str, Any], state: Optional[dict[str, Any]] = None,
                         optim_tensors: Optional[dict[str, torch.Tensor]] = None, keep_last: int = 2) -> Path:
    """Write run_dir/checkpoints/<name>/ completely under a temporary name, rename it into place, point
    run_dir/latest.json at it, then delete all but the newest `keep_last` checkpoints."""
    root = Path(run_dir) / CKPT_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / name
    tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX + name + ".", dir=str(root)))
    try:
        os.chmod(tmp, 0o777 & ~_UMASK)
        save_tensors(tmp / MODEL_FILE, model_state, _model_metadata(config))
        atomic_write_json(tmp / CONFIG_FILE, config)
        if optim_tensors is not None:
            save_tensors(tmp / OPTIM_FILE, optim_tensors)
        if state is not None:
            atomic_write_json(tmp / STATE_FILE, state)
        if final.exists():  # same name written again (e.g. resumed at the same step): replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(root)
    atomic_write_json(Path(run_dir) / LATEST_FILE, {"checkpoint": f"{CKPT_DIR}/{name}"})
    if keep_last > 0:
        for old in list_checkpoints(run_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(TMP_PREFIX + "*"):  # left by a crash in an earlier run
        shutil.rmtree(stale, ignore_errors=True)
    return final

def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoint directories of a run, oldest first (names sort by step)."""
    root = Path(run_dir) / CKPT_DIR
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(TMP_PREFIX)
                  and (p / MODEL_FILE).is_file())

def find_checkpoint(path: str | os.PathLike) -> Path:
    """Resolve `path` to a checkpoint directory: a checkpoint dir itself, a run dir (its latest
    checkpoint, else its exported model), or a model.safetensors / config.json file inside one."""
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} not found")
    if path.is_file():
        if path.suffix in (".safetensors", ".json"):
            return path.parent
        raise CheckpointError(f"{path} is not a checkpoint (expected a directory or a .safetensors file)")
    if (path / LATEST_FILE).is_file():
        latest = read_json(path / LATEST_FILE)
        target = path / str(latest.get("checkpoint", ""))
        if not (target / MODEL_FILE).is_file():
            what = (f"its latest checkpoint {target} has no {MODEL_FILE}" if target.is_dir()
                    else f"{LATEST_FILE} points to missing directory {target}")
            raise CheckpointError(f"corrupt run directory {path}: {what}")
        return target
    if (path / MODEL_FILE).is_file():
        return path
    ckpts = list_checkpoints(path)
    if ckpts:
        return ckpts[-1]
    raise CheckpointError(f"no checkpoint in {path} (expected {MODEL_FILE} or {LATEST_FILE})")

def _check_safetensors(path: Path) -> None:
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} not found")
    try:
        with safe_open(str(path), "pt") as f:  # reads the header only; a truncated file fails here
            f.keys()
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"corrupt checkpoint {_describe(path)}: not a valid safetensors file "
                              f"({str(err).splitlines()[0] if str(err) else type(err).__name__})") from None

def check_checkpoint(directory: str | os.PathLike) -> None:
    """CheckpointError unless the checkpoint's weights and config (and, where present, optimiser state
    and progress) are there and readable; cheap: safetensors headers and the JSON files only."""
    directory = Path(directory)
    _check_safetensors(directory / MODEL_FILE)
    read_json(directory / CONFIG_FILE)
    if (directory / OPTIM_FILE).exists():
        _check_safetensors(directory / OPTIM_FILE)
    if (directory / STATE_FILE).exists():
        read_json(directory / STATE_FILE)

def _intact(directory: Path) -> bool:
    try:
        check_checkpoint(directory)
    except CheckpointError:
        return False
    return True

def resume_checkpoint(run_dir: str | os.PathLike, log: Optional[TextIO] = sys.stderr) -> Path:
    """The checkpoint `--resume` continues from: the one latest.json names, checked file by file.

    A corrupt latest checkpoint is never skipped silently (that would quietly throw away training): the
    error names the newest intact earlier checkpoint (kept by --keep-last) and says to delete the corrupt
    one; run again with --resume and it continues from the intact one, with a printed line saying so
    (latest.json then names a checkpoint that is gone, and the newest intact checkpoint is used).
    """
    run_dir = Path(run_dir)
    ckpts = list_checkpoints(run_dir)
    pointer = run_dir / LATEST_FILE
    latest = None
    if pointer.is_file():
        try:
            target = run_dir / str(read_json(pointer).get("checkpoint", ""))
        except (CheckpointError, AttributeError) as err:
            hint = f"delete it and run again with --resume to continue from {ckpts[-1]}" if ckpts else \
                "start again with --overwrite"
            raise CheckpointError(f"--resume: {err if isinstance(err, CheckpointError) else pointer}; {hint}") \
                from None
        latest = target if target.is_dir() else None
        if latest is None and ckpts and log is not None:
            print(f"--resume: {target} (named in {pointer}) is gone; resuming from {ckpts[-1]}", file=log,
                  flush=True)
    latest = latest or (ckpts[-1] if ckpts else None)
    if latest is None:
        raise CheckpointError(f"--resume: no checkpoint to resume in {run_dir} (no {LATEST_FILE} or {CKPT_DIR}/)")
    try:
        check_checkpoint(latest)
    except CheckpointError as err:
        earlier = [c for c in ckpts if c.name < latest.name and _intact(c)]
        hint = (f"the previous checkpoint {earlier[-1]} is intact: delete {latest} and run again with --resume to "
                f"continue from it" if earlier else "no intact earlier checkpoint is left: start again with "
                "--overwrite")
        raise CheckpointError(f"--resume: the latest checkpoint {latest} is unusable ({err}); {hint}") from None
    return latest

def check_output_dir(flag: str, path: str | os.PathLike) -> None:
    """ValueError naming `flag` when the folder `path` is a file or lies below one (it could not be made)."""
    path = Path(path)
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                where = "is a file" if p == path else f"lies below the file {p}"
                raise ValueError(f"{flag} {path} {where}; {flag} must be a folder (choose another {flag})")
            return

def export_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, half: bool = False,
                      extra: Optional[dict[str, Any]] = None) -> Path:
    """Copy a checkpoint's weights and config (no optimiser state) to directory `dst`, optionally in
    float16 (`half`), adding `extra` (e.g. final metrics) to config.json."""
    ckpt = find_checkpoint(src)
    tensors, _ = load_tensors(ckpt / MODEL_FILE)
    config = read_json(ckpt / CONFIG_FILE)
    if extra:
        config = {**config, **extra}
    if half:
        tensors = {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}
        config = {**config, "stored_dtype": "float16"}
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    save_tensors(dst / MODEL_FILE, tensors, _model_metadata(config))
    atomic_write_json(dst / CONFIG_FILE, config)
    return dst
