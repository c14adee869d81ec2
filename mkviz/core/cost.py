"""What a model costs: parameters and FLOPs (counted by `torch.utils.flop_counter`), and the machine a cost was
measured on (`machine_description`)."""
from __future__ import annotations

import os
import platform
import subprocess
from typing import Any, Optional, Sequence

import timm
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .key import key_impl
from .switches import eager_attention

__all__ = ["count_params", "count_flops", "count_train_flops", "gpu_driver_version", "machine_description"]


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (shared parameters counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_flops(model: nn.Module, input_size: Sequence[int] = (1, 3, 224, 224), reference: bool = True) -> int:
    """FLOPs of one forward pass on a zero input of `input_size` (B, C, H, W); a multiply-add counts 2.

    reference=True (default) counts the manifold key as written, every chart materialised: the
    nominal cost of the architecture. reference=False counts what the fast path executes
    (parameter-space key matrix, `docs/design.md` §6). Attention matmuls are counted on the eager path.
    """
    if len(input_size) != 4 or any(int(s) < 1 for s in input_size):
        raise ValueError(f"input_size must be (batch, channels, height, width) of positive ints; got {input_size!r}")
    ref = next(model.parameters())
    x = torch.zeros(*input_size, device=ref.device, dtype=ref.dtype)
    # FlopCounterMode does not count CPU scaled_dot_product_attention: count the eager matmuls instead
    with torch.no_grad(), key_impl(model, "reference" if reference else "fast"), eager_attention(model), \
            FlopCounterMode(display=False) as counter:
        model(x)
    return int(counter.get_total_flops())


def count_train_flops(model: nn.Module, input_size: Sequence[int] = (64, 3, 224, 224)) -> int:
    """FLOPs of one training step's forward and backward (of the summed logits) on a zero batch of `input_size`,
    as training executes them: the manifold key's fast path (for the linear variants the key matrix is formed
    in parameter space once per step), attention matmuls counted on the eager path. The optimiser is not
    counted. The model's parameter gradients are left as they were."""
    if len(input_size) != 4 or any(int(s) < 1 for s in input_size):
        raise ValueError(f"input_size must be (batch, channels, height, width) of positive ints; got {input_size!r}")
    ref = next(model.parameters())
    x = torch.zeros(*input_size, device=ref.device, dtype=ref.dtype)
    saved = [(p, p.grad) for p in model.parameters()]
    with key_impl(model, "fast"), eager_attention(model, in_eval=False), FlopCounterMode(display=False) as counter:
        model(x).sum().backward()
    for p, grad in saved:
        p.grad = grad
    return int(counter.get_total_flops())


def gpu_driver_version() -> Optional[str]:
    """The NVIDIA driver's version as `nvidia-smi` reports it, None without a GPU or without nvidia-smi."""
    if not torch.cuda.is_available():
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.strip().splitlines()[0] if out.strip() else None


def machine_description() -> dict[str, Any]:
    """What a benchmark or sweep record says about the machine: versions, platform, CPUs, torch threads, GPU
    (name, CUDA version torch was built with, driver)."""
    cuda = torch.cuda.is_available()
    return dict(python=platform.python_version(), torch=torch.__version__, timm=timm.__version__,
                platform=platform.platform(), processor=platform.machine(), cpu_count=os.cpu_count(),
                torch_threads=torch.get_num_threads(),
                gpu=torch.cuda.get_device_name(0) if cuda else None,
                cuda=torch.version.cuda if cuda else None, gpu_driver=gpu_driver_version())
