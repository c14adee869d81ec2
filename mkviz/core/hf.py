"""Hugging Face `transformers` ViT, DeiT, Swin and DINOv2: the manifold key inside their attention.

    convert_attention(path, attn, ...)   attn.k_proj (nn.Linear) -> ManifoldKey, same key at step 0
    fold(model)                          every ManifoldKey k_proj -> nn.Linear (the effective key matrix)
    attach_recorder(attn, keep, ...)     fused and per-chart maps, whatever `attn_implementation`

`mkviz.convert`, `mkviz.fold` and `mkviz.record_attention` call these for Hugging Face models; users need
not import this module. `transformers` is an optional dependency (`pip install mkviz[hf]`): this module
imports it only when a recording starts, so that the rest of mkviz works without it.

Each supported attention class (transformers >= 5.24 layout; `docs/design.md` §11.6) computes, for
hidden states x (B, N, C_in),

    q, k, v = q_proj(x), k_proj(x), v_proj(x)          (B, N, heads·d) -> (B, heads, N, d)
    out, attn = attention_interface(self, q, k, v, mask, scaling=d**-0.5, ...)
    return o_proj(out), attn

where `attention_interface` is chosen by `config._attn_implementation` ("eager", "sdpa", ...) and `mask`
is None for ViT, DeiT and DINOv2 and Swin's relative position bias plus its shifted-window mask. The
manifold key is a `ManifoldKey` in place of `k_proj`: it maps (B, N, C_in) -> (B, N, heads·d) like the
Linear it replaces, so the forward, every attention implementation and `output_attentions` are untouched.
"""
from __future__ import annotations

import copy
import sys
from typing import Callable, Iterator, Optional

import torch
from torch import nn

from .key import ManifoldKey
from .preservation import check_preserves_key

__all__ = ["HF_ATTENTION", "MIN_TRANSFORMERS", "RECORDING_IMPLEMENTATION", "is_hf_attention", "unsupported_reason",
           "convert_attention", "manifold_keys", "fold", "recording_attention", "attach_recorder", "chart_attention"]

MIN_TRANSFORMERS = "5.24"

# the attention classes converted, by qualified name (so that this module imports without transformers)
HF_ATTENTION = {
    "transformers.models.vit.modeling_vit.ViTAttention": "ViT",
    "transformers.models.deit.modeling_deit.DeiTAttention": "DeiT",
    "transformers.models.swin.modeling_swin.SwinAttention": "Swin",
    "transformers.models.dinov2.modeling_dinov2.Dinov2Attention": "DINOv2",
}

# the name under which `recording_attention` is registered in transformers' AttentionInterface
RECORDING_IMPLEMENTATION = "mkviz_record"


def qualified_name(module: nn.Module) -> str:
    return f"{type(module).__module__}.{type(module).__qualname__}"


def is_hf_attention(module: nn.Module) -> bool:
    """True for the `transformers` attention modules mkviz converts and records (`HF_ATTENTION`)."""
    return qualified_name(module) in HF_ATTENTION and isinstance(getattr(module, "k_proj", None), nn.Module)


def unsupported_reason(module: nn.Module) -> Optional[str]:
    """Why a `transformers` attention module is not converted, or None for modules outside `transformers`."""
    if not type(module).__module__.startswith("transformers."):
        return None
    return ("Hugging Face transformers: mkviz converts " + ", ".join(n.rpartition(".")[2] for n in HF_ATTENTION)
            + f" (with q_proj/k_proj/v_proj, transformers >= {MIN_TRANSFORMERS}); not this class")


# --------------------------------------------------------------------------- conversion
@torch.no_grad()
def convert_attention(path: str, attn: nn.Module, preserve: bool, perturbation: float,
                      generator: Optional[torch.Generator], *, variant: str, num_charts: int, kernel_size: int,
                      expand_from: str, context_broadcast: bool, ua_weight: float) -> None:
    """Replace `attn.k_proj` (nn.Linear C_in -> heads·d) by a `ManifoldKey`, in place.

    preserve: `load_base_key` (the fused key equals the old key; charts differ by a zero-sum δ_c of relative
    size `perturbation`), else the from-scratch key initialisation. Queries, values, o_proj, Swin's relative
    position bias and the attention implementation stay as they are.
    """
    old = attn.k_proj
    if isinstance(old, ManifoldKey):
        raise ValueError(f"{path}: {type(attn).__name__} already has a manifold key; convert a plain model")
    if context_broadcast:
        raise ValueError(f"context_broadcast: True is not supported for Hugging Face models ({path}: "
                         f"{type(attn).__name__}); use context_broadcast=False")
    if type(old) is not nn.Linear:
        raise ValueError(f"{path}.k_proj: expected an nn.Linear key projection; got {type(old).__name__}")
    key = ManifoldKey(old.in_features, old.out_features, variant, num_charts, kernel_size=kernel_size,
                      expand_from=expand_from, bias=old.bias is not None, ua_weight=ua_weight,
                      device=old.weight.device, dtype=old.weight.dtype)
    if preserve:
        key.load_base_key(old.weight, old.bias, perturbation=perturbation, generator=generator)
        check_preserves_key(path, key, old.weight, old.bias, perturbation)
    else:
        key.reset_parameters("scratch", generator=generator)
    key.train(old.training)
    attn.k_proj = key


def manifold_keys(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """(path, attention module) of every supported `transformers` attention whose `k_proj` is a ManifoldKey."""
    for path, module in model.named_modules():
        if is_hf_attention(module) and isinstance(module.k_proj, ManifoldKey):
            yield path, module


def fold(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Every linear manifold key (VanillaK, SimpleK, SpatialK, kernel_size 1) back to an `nn.Linear` `k_proj`
    holding its effective key matrix (`ManifoldKey.effective_linear`): the plain model, same outputs and the
    original state-dict keys. ValueError naming the layer for KUA or kernel_size > 1; nothing is changed then."""
    for path, attn in manifold_keys(model):
        key = attn.k_proj
        if not key.foldable:
            why = ("its per-token softmax membership makes the key nonlinear in x" if not key.is_linear
                   else f"kernel_size={key.kernel_size} mixes neighbouring tokens")
            raise ValueError(f"fold(): {path} uses variant {key.variant!r} and cannot be folded into a plain "
                             f"linear key: {why}. Keep the unfolded model for inference.")
    if not inplace:
        model = copy.deepcopy(model)
    for _, attn in list(manifold_keys(model)):
        key = attn.k_proj
        with torch.no_grad():
            weight, bias = key.effective_linear()  # (C, C_in), (C,) or None
            linear = nn.Linear(key.in_dim, key.key_dim, bias=bias is not None, device=weight.device,
                               dtype=weight.dtype)
            linear.weight.copy_(weight)
            if bias is not None:
                linear.bias.copy_(bias)
        linear.train(key.training)
        attn.k_proj = linear
    if hasattr(model, "mkviz_config"):
        model.mkviz_config = {**model.mkviz_config, "folded": True}
    return model


# --------------------------------------------------------------------------- recording
def recording_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                        attention_mask: Optional[torch.Tensor], **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """An attention implementation for transformers' AttentionInterface: the model file's own
    `eager_attention_forward` (so the map is exactly what `output_attentions=True` returns on an eager model),
    then `module.mkviz_recorder(query, attn, attention_mask, scaling)`.

    query, key, value: (B, heads, N, d); attention_mask: additive, broadcastable to (B, heads, N, N), or None.
    Returns (B, N, heads, d) and the attention (B, heads, N, N).
    """
    eager = sys.modules[type(module).__module__].eager_attention_forward
    out, attn = eager(module, query, key, value, attention_mask, **kwargs)
    recorder = getattr(module, "mkviz_recorder", None)
    if recorder is not None:
        scaling = kwargs.get("scaling")
        recorder(query, attn, attention_mask, scaling if scaling is not None else query.shape[-1] ** -0.5)
    return out, attn


def register_recording_attention() -> None:
    """Register `recording_attention` as `RECORDING_IMPLEMENTATION` in transformers' AttentionInterface."""
    from transformers import AttentionInterface

    AttentionInterface.register(RECORDING_IMPLEMENTATION, recording_attention)


def chart_attention(query: torch.Tensor, chart_keys: torch.Tensor, attention_mask: Optional[torch.Tensor],
                    scaling: float) -> torch.Tensor:
    """Per-chart attention A_c = softmax(q · K_cᵀ · scaling + mask), computed like transformers' eager path
    (the product, then the scale, then the mask; the softmax in float32, cast back to q's dtype).

    query: (B, heads, N, d); chart_keys: (B, H, N, heads·d); attention_mask: broadcastable to
    (B, heads, N, N) or None. Returns (B, H, heads, N, N).
    """
    B, H, N, _ = chart_keys.shape
    heads, d = query.shape[1], query.shape[-1]
    k = chart_keys.view(B, H, N, heads, d).permute(0, 1, 3, 2, 4)  # (B, H, heads, N, d)
    logits = torch.matmul(query.unsqueeze(1), k.transpose(-1, -2)) * scaling  # (B, H, heads, N, N)
    if attention_mask is not None:  # the same mask (Swin: position bias + shift mask) for every chart
        logits = logits + attention_mask.unsqueeze(1)
    return logits.softmax(dim=-1, dtype=torch.float32).to(query.dtype)


def attach_recorder(attn: nn.Module, keep: Callable[[str, torch.Tensor], None], charts: bool = True,
                    keep_bias: bool = False, grad: bool = False) -> Callable[[], None]:
    """Record one `transformers` attention module until the returned callable is called.

    The module gets its own copy of the config with `_attn_implementation = RECORDING_IMPLEMENTATION` (the
    model's config and every other layer keep theirs, "eager" or "sdpa"), a forward pre-hook for its hidden
    states x (B, N, C_in) and a `mkviz_recorder`. Each forward then calls keep(kind, tensor) with kind
    "attention" (B, heads, N, N), "queries" (B, heads, N, d), "attn_bias" (the additive mask, keep_bias only),
    and with charts and a ManifoldKey `k_proj`: "chart_keys" (B, H, N, heads·d), "chart_attention"
    (B, H, heads, N, N), "membership" (B, N, H; KUA). grad: keep the autograd graph of the chart maps.
    """
    register_recording_attention()
    inputs: dict = {}

    def on_input(_module, args, kwargs):
        inputs["x"] = args[0] if args else kwargs["hidden_states"]

    def recorder(query, attn_map, attention_mask, scaling):
        keep("attention", attn_map)
        keep("queries", query)
        if keep_bias and attention_mask is not None:
            keep("attn_bias", attention_mask)
        key, x = attn.k_proj, inputs.pop("x", None)
        if not charts or not isinstance(key, ManifoldKey) or x is None:
            return
        with torch.set_grad_enabled(torch.is_grad_enabled() and grad):
            chart_keys = key.chart_keys(x)  # (B, H, N, heads·d)
            keep("chart_keys", chart_keys)
            keep("chart_attention", chart_attention(query, chart_keys, attention_mask, scaling))
            if key.membership is not None:
                keep("membership", key.membership_probs(x))

    handle = attn.register_forward_pre_hook(on_input, with_kwargs=True)
    config = attn.config
    attn.config = copy.copy(config)
    attn.config._attn_implementation = RECORDING_IMPLEMENTATION
    attn.mkviz_recorder = recorder

    def undo() -> None:
        handle.remove()
        attn.config = config
        del attn.mkviz_recorder

    return undo
