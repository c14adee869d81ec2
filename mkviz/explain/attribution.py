"""captum attributions for timm / mkviz vision transformers: input, patch embedding, attention matrix.

    integrated_gradients(model, images, target)                 -> (B, 3, H, W)     pixels
    layer_integrated_gradients(model, images, target)           -> (B, gh, gw)      patches (patch_embed)
    attention_attribution(model, images, target, layer=-1)      -> like rec.attention[layer]

All three work on plain timm models and on models converted by `mkviz.convert` (ViT, DeiT, Swin).
While they run, the model is put in eval mode (dropout off: attributions of a random forward mean
nothing) and the attention layer(s) involved are switched to the eager path (`fused_attn=False`);
both are restored afterwards, also on errors. `internal_batch_size` is counted in images and bounds
how many interpolated images go through the model at once (captum's `internal_batch_size`).

Attention attribution, methods (`method=`):
    "ig" (default): integrated gradients on the attention matrix A of one layer, from a baseline
        attention A' ("zeros", as in AttAttr, Hao et al., AAAI 2021; "uniform" rows 1/N; or a tensor):
        Attr = (A − A') ⊙ ∫₀¹ ∂F(A' + α(A − A'))/∂A dα, with the image x fixed and every other layer
        as usual. The attention is replaced at the output of the layer's `attn_drop` module (the eager
        path applies attn_drop right after the softmax, so in eval mode that output is A). Completeness:
        Σ Attr ≈ F(x; A) − F(x; A') (tested).
    "layer_ig": captum `LayerIntegratedGradients` on `attn_drop`: the baseline attention is the one the
        model computes for the baseline image (default: zeros).
    "grad_x_attn": captum `LayerGradientXActivation` on `attn_drop`: A ⊙ ∂F/∂A (one backward pass).
"""
from __future__ import annotations

from typing import List, Optional, Union

import torch
from torch import nn

from ..core.models import class_logits
from ..core.switches import eager_attention, eval_mode, select_layers

__all__ = ["integrated_gradients", "layer_integrated_gradients", "attention_attribution", "attention_replaced"]

Target = Union[None, int, torch.Tensor, List[int]]


def _forward(model: nn.Module):
    def forward(images, *args):
        return class_logits(model(images))
    return forward


def _baseline(images: torch.Tensor, baseline) -> torch.Tensor:
    if baseline is None:
        return torch.zeros_like(images)
    if isinstance(baseline, (int, float)):
        return torch.full_like(images, float(baseline))
    if baseline.shape != images.shape and baseline.shape != images.shape[1:]:
        raise ValueError(f"baseline: expected shape {tuple(images.shape)} or {tuple(images.shape[1:])}; "
                         f"got {tuple(baseline.shape)}")
    return baseline.expand_as(images).to(images)


def _check_images(images) -> None:
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise ValueError(f"images: expected a (B, C, H, W) tensor; got {getattr(images, 'shape', type(images))}")


def integrated_gradients(model: nn.Module, images: torch.Tensor, target: Target, baseline=None, n_steps: int = 32,
                         internal_batch_size: Optional[int] = None, method: str = "gausslegendre",
                         return_convergence_delta: bool = False):
    """Integrated gradients on the input pixels (captum `IntegratedGradients`).

    images: (B, 3, H, W); target: class index (int, or (B,) tensor / list); baseline: None (black = zeros),
    a number, or a tensor (B, 3, H, W) / (3, H, W). Returns attributions (B, 3, H, W) and, with
    return_convergence_delta, captum's per-image completeness error Σ attr − (F(x) − F(baseline)).
    """
    from captum.attr import IntegratedGradients
    _check_images(images)
    base = _baseline(images, baseline)
    with eval_mode(model):
        ig = IntegratedGradients(_forward(model))
        return ig.attribute(images, baselines=base, target=target, n_steps=n_steps, method=method,
                            internal_batch_size=internal_batch_size,
                            return_convergence_delta=return_convergence_delta)


def _patch_map(attr: torch.Tensor, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Sum a patch-embedding attribution over channels and lay it on the patch grid: (B, gh, gw)."""
    if attr.dim() == 4:  # Swin: (B, gh, gw, C) (NHWC) or a conv output (B, C, gh, gw)
        fmt = getattr(getattr(model, "patch_embed", None), "output_fmt", None)
        nchw = fmt is not None and str(getattr(fmt, "value", fmt)).upper() == "NCHW"
        return attr.sum(1) if nchw else attr.sum(-1)
    if attr.dim() == 3:  # ViT: (B, gh·gw, C)
        pe = getattr(model, "patch_embed", None)
        if pe is not None and hasattr(pe, "dynamic_feat_size"):
            gh, gw = (int(v) for v in pe.dynamic_feat_size(tuple(images.shape[-2:])))
        else:
            gh = gw = int(round(attr.shape[1] ** 0.5))
        if gh * gw != attr.shape[1]:
            raise ValueError(f"cannot lay {attr.shape[1]} patch attributions on a {gh}x{gw} grid")
        return attr.sum(-1).reshape(attr.shape[0], gh, gw)
    raise ValueError(f"unexpected patch-embedding attribution shape {tuple(attr.shape)}")


def layer_integrated_gradients(model: nn.Module, images: torch.Tensor, target: Target, layer: Optional[nn.Module] = None,
                               baseline=None, n_steps: int = 32, internal_batch_size: Optional[int] = None,
                               method: str = "gausslegendre", reduce: str = "patches",
                               return_convergence_delta: bool = False):
    """Integrated gradients on a layer's output (captum `LayerIntegratedGradients`), by default the patch embedding.

    The path runs from the layer's output for the baseline image (default zeros) to its output for `images`.
    layer: a submodule (default `model.patch_embed`). reduce="patches" (default, patch embedding only) sums over
    channels and returns a per-patch map (B, gh, gw) (Swin too); reduce="none" returns captum's raw attribution,
    shaped like the layer output. Since everything downstream depends on the image only through the patch
    embedding, Σ attr ≈ F(x) − F(baseline) (the delta captum returns).
    """
    from captum.attr import LayerIntegratedGradients
    _check_images(images)
    if reduce not in ("patches", "none"):
        raise ValueError(f"reduce: expected 'patches' or 'none'; got {reduce!r}")
    if layer is None:
        layer = getattr(model, "patch_embed", None)
        if layer is None:
            raise ValueError(f"{type(model).__name__} has no patch_embed; pass layer=")
    base = _baseline(images, baseline)
    with eval_mode(model):
        lig = LayerIntegratedGradients(_forward(model), layer)
        out = lig.attribute(images, baselines=base, target=target, n_steps=n_steps, method=method,
                            internal_batch_size=internal_batch_size,
                            return_convergence_delta=return_convergence_delta)
    attr, delta = out if return_convergence_delta else (out, None)
    if reduce == "patches":
        attr = _patch_map(attr, model, images)
    return (attr, delta) if return_convergence_delta else attr


_ATTN_METHODS = ("ig", "layer_ig", "grad_x_attn")


def _one_layer(model: nn.Module, layer) -> str:
    if isinstance(layer, nn.Module):
        for n, m in model.named_modules():
            if m is layer:
                layer = n
                break
        else:
            raise ValueError("layer: module is not part of model")
    names = select_layers(model, [layer])
    if len(names) != 1:
        raise ValueError(f"layer: {layer!r} selects {len(names)} attention layers ({names}); pick one")
    return names[0]


def attention_attribution(model: nn.Module, images: torch.Tensor, target: Target, layer: Union[str, int, nn.Module] = -1,
                          method: str = "ig", baseline: Union[str, torch.Tensor, None] = None, n_steps: int = 32,
                          internal_batch_size: Optional[int] = None, integration: str = "gausslegendre",
                          return_convergence_delta: bool = False):
    """Attribution of the class score to the attention matrix of ONE attention layer.

    layer: path ("blocks.3.attn"), int (attention-layer index, -1 = last) or the module; method: "ig",
    "layer_ig" or "grad_x_attn" (module docstring). baseline: for "ig" the baseline attention, "zeros"
    (default, AttAttr), "uniform", or a tensor shaped like the attention; for "layer_ig" the baseline IMAGE
    (default zeros). Returns attributions shaped like `rec.attention[layer]`: (B, heads, N, N) for ViT,
    (B·nW, heads, Nw, Nw) for Swin, and with return_convergence_delta (methods "ig", "layer_ig") the per-image
    completeness error Σ attr − (F(x; A) − F(x; A')), where for "layer_ig" A' is the attention of the baseline
    image (captum's own delta, against F(baseline image), would count paths that bypass this layer).
    """
    from captum.attr import IntegratedGradients, LayerGradientXActivation, LayerIntegratedGradients
    _check_images(images)
    if method not in _ATTN_METHODS:
        raise ValueError(f"method: expected one of {_ATTN_METHODS}; got {method!r}")
    name = _one_layer(model, layer)
    module = model.get_submodule(name)
    B = images.shape[0]
    forward = _forward(model)
    with eager_attention(model, [name]):
        if method == "grad_x_attn":
            if return_convergence_delta:
                raise ValueError("grad_x_attn has no convergence delta")
            return LayerGradientXActivation(forward, module.attn_drop).attribute(images, target=target)
        if method == "layer_ig":
            img_base = _baseline(images, None if isinstance(baseline, str) else baseline)
            with torch.no_grad():
                attn = _attention_of(model, module, images)
            rows = attn.shape[0]  # B, or B·nW for Swin: captum batches over the layer's rows
            ibs = internal_batch_size * (rows // B) if internal_batch_size else None
            attr = LayerIntegratedGradients(forward, module.attn_drop).attribute(
                images, baselines=img_base, target=target, n_steps=n_steps, method=integration,
                internal_batch_size=ibs)
            if not return_convergence_delta:
                return attr
            # completeness of the path actually integrated: attention from A(baseline image) to A(x), x fixed
            with torch.no_grad():
                a_base = _attention_of(model, module, img_base)
                gap = _select(forward(images), target) - _select(_run_replaced(forward, module, images, a_base), target)
            return attr, attr.reshape(B, -1).sum(1) - gap
        # "ig": integrated gradients on the attention itself, the image held fixed
        with torch.no_grad():
            attn = _attention_of(model, module, images)  # (rows, heads, n, n)
        rows = attn.shape[0]
        if rows % B:
            raise ValueError(f"attention batch {rows} is not a multiple of the image batch {B}")
        grouped = attn.reshape(B, rows // B, *attn.shape[1:])  # batch dim = images, for captum's batching
        if baseline is None or (isinstance(baseline, str) and baseline == "zeros"):
            att_base = torch.zeros_like(grouped)
        elif isinstance(baseline, str) and baseline == "uniform":
            att_base = torch.full_like(grouped, 1.0 / attn.shape[-1])
        elif isinstance(baseline, torch.Tensor):
            if baseline.shape != attn.shape:
                raise ValueError(f"baseline: expected an attention of shape {tuple(attn.shape)}; "
                                 f"got {tuple(baseline.shape)}")
            att_base = baseline.to(attn).reshape(grouped.shape)
        else:
            raise ValueError(f"baseline: expected 'zeros', 'uniform', a tensor or None; got {baseline!r}")

        def forward_with_attention(a: torch.Tensor, imgs: torch.Tensor) -> torch.Tensor:
            return _run_replaced(forward, module, imgs, a.reshape(-1, *a.shape[2:]))

        ig = IntegratedGradients(forward_with_attention)
        out = ig.attribute(grouped, baselines=att_base, target=target, additional_forward_args=(images,),
                           n_steps=n_steps, method=integration, internal_batch_size=internal_batch_size,
                           return_convergence_delta=return_convergence_delta)
        attr, delta = out if return_convergence_delta else (out, None)
        attr = attr.reshape(attn.shape)
        return (attr, delta) if return_convergence_delta else attr


def _select(out: torch.Tensor, target: Target) -> torch.Tensor:
    """Per-image score out[b, target_b] (out (B,) is returned as is)."""
    if target is None:
        return out.reshape(out.shape[0])
    if isinstance(target, int):
        return out[:, target]
    t = torch.as_tensor(target, device=out.device).reshape(-1, 1)
    return out.gather(1, t.expand(out.shape[0], 1)).squeeze(1)


def _attention_of(model: nn.Module, module: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The attention (attn_drop's input on the eager path) of `module` for `images`."""
    seen = {}

    def hook(_m, args):
        seen["a"] = args[0]

    h = module.attn_drop.register_forward_pre_hook(hook)
    try:
        model(images)
    finally:
        h.remove()
    return seen["a"]


def _run_replaced(forward, module: nn.Module, images: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
    """forward(images) with `module`'s attention (attn_drop output) replaced by `attn`."""
    def hook(_m, _args, out):
        if out.shape != attn.shape:
            raise ValueError(f"replacement attention {tuple(attn.shape)} does not match {tuple(out.shape)}")
        return attn

    h = module.attn_drop.register_forward_hook(hook)
    try:
        return forward(images)
    finally:
        h.remove()


def attention_replaced(model: nn.Module, images: torch.Tensor, layer, attn: torch.Tensor) -> torch.Tensor:
    """Model output for `images` with the attention of `layer` replaced by `attn` (shaped like the recorded
    attention); the reference for the completeness check F(x; A) − F(x; A')."""
    name = _one_layer(model, layer)
    module = model.get_submodule(name)
    with eager_attention(model, [name]):
        return _run_replaced(_forward(model), module, images, attn)
