"""What the manifold modules need to be traced: torch.fx leaves, proxies, and TorchScript's refusal.

    check_tokens     the input check `x (batch, tokens, width)`, a leaf of torch.fx tracing: each module that
                     calls it registers it with `torch.fx.wrap("check_tokens")` (wrap patches the name in the
                     globals of the module that calls it), so a traced graph records the call and still raises the
                     eager message, and the trace never branches on a traced shape
    is_symbolic      True for a torch.fx proxy: no value, no storage, no autocast state to read
    SCRIPT_REFUSAL   the one line `__prepare_scriptable__` raises: torch.jit.script is refused (README's support
                     table; docs/design.md §11.5)
"""
from __future__ import annotations

import torch

__all__ = ["check_tokens", "is_symbolic", "SCRIPT_REFUSAL"]

SCRIPT_REFUSAL = ("torch.jit.script: mkviz's manifold-key modules are not scriptable (TorchScript is deprecated in "
                  "torch 2.14); use torch.export or torch.compile, or mkviz.fold(model) for a plain timm model")


def check_tokens(x: torch.Tensor, width: int, what: str) -> None:
    """ValueError unless x is (batch, tokens, width). A leaf of torch.fx tracing where its callers wrap it: traced
    graphs record the call and run the check on real tensors; the trace itself never branches on x's shape."""
    if x.dim() != 3 or x.shape[-1] != width:
        raise ValueError(f"x: expected shape (batch, tokens, {width}) for {what} of input width {width}; "
                         f"got {tuple(x.shape)}")


def is_symbolic(t: object) -> bool:
    """True for a torch.fx symbolic-tracing proxy (parameters and activations while `torch.fx.symbolic_trace` or
    torchvision's feature extraction traces): no value, no storage, no autocast state to read."""
    return isinstance(t, torch.fx.Proxy)
