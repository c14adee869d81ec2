"""Class relevance: which patches made the model predict a class (Chefer, Gur & Wolf, ICCV 2021).

    rel = mkviz.class_relevance(model, images)                   # (B, P)     P = patches, prefix tokens dropped
    rel = mkviz.class_relevance(model, images, target=3)         # relevance for class 3 instead of the arg-max
    per_chart = mkviz.class_relevance(mk, images, charts=True)   # (B, H, P)  one map per chart
    mkviz.relevance_map(rel, model, image_size=224)              # (B, 224, 224) on the image

The rule ("Generic attention-model explainability", rules 5 and 6; the authors' reference code
hila-chefer/Transformer-MM-Explainability, `avg_heads` and `apply_self_attention_rules`):

    R = I (N × N);  for each block l in model order:
        Ā_l = mean_heads( (∂y_t/∂A_l ⊙ A_l)⁺ )        clamp each head at 0, then average
        R  ← R + Ā_l R
    relevance = R[cls, patches]                      unnormalised

y_t is the logit (not the probability) of the target class, A_l the layer's softmax output (the
attention the model used: fused attention for mkviz models, timm's for plain ones). Only the output
row of R is needed, so it is computed as a row vector from the last block back to the first,
r = e (I + Ā_L) ··· (I + Ā_1): L products (B, N) × (B, N, N) instead of L products of N × N matrices.
The output row e is the class token's (global_pool "token"; a distilled DeiT averages its class and
distillation tokens like its head does) or the mean over patches (global_pool "avg").

Per chart (`charts=True`; docs/design.md §2.9): chart c's relevance replaces each manifold layer's Ā by
Ā_c = mean_heads((∂y_t/∂A ⊙ A_c)⁺), the chart's own map A_c weighted by the gradient of the attention
the model actually used; plain layers keep Ā. Where every chart's map equals the fused one, every
chart's relevance equals the fused relevance (tested).

Swin: the window maps are placed in the stage's full token grid (the shift and padding of
`mkviz.explain.maps.swin_window_attention_to_image`), patch merging hands a merged token's relevance to its
2×2 source tokens in equal parts, the output row is the mean over the last stage's tokens (Swin's
average pooling); the result is on the patch grid of the first stage.

Cost: one forward on the eager attention path and one backward to the attention maps only (no
parameter gradients), plus L small products; `python -m mkviz.bench_record --relevance` measures it
against a forward + backward (docs/benchmarks.md).
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Union

import torch
from torch import nn
from torch.nn import functional as F

from ..core.models import class_logits
from ..core.switches import eval_mode
from .maps import patch_grid, upsample_map
from .record import record_attention

__all__ = ["class_relevance", "relevance_map", "resolve_target", "output_row"]

Target = Union[None, int, Sequence[int], torch.Tensor]


def resolve_target(logits: torch.Tensor, target: Target) -> torch.Tensor:
    """The target class of each image as a (B,) long tensor: None = arg-max, an int for all, or one per image."""
    B, num_classes = logits.shape
    if target is None:
        return logits.argmax(dim=1)
    if isinstance(target, bool) or not isinstance(target, (int, Sequence, torch.Tensor)):
        raise ValueError(f"target: expected None, an int or one class per image; got {target!r}")
    t = torch.as_tensor(target, device=logits.device).long().reshape(-1)
    if t.numel() == 1:
        t = t.expand(B)
    if t.numel() != B:
        raise ValueError(f"target: expected one class per image ({B}); got {t.numel()}")
    if t.min() < 0 or t.max() >= num_classes:
        raise ValueError(f"target: classes must lie in [0, {num_classes}); got {t.tolist()}")
    return t


def output_row(model: nn.Module, num_tokens: int, batch: int, ref: torch.Tensor) -> torch.Tensor:
    """The row e of R that the classifier reads (B, N): class token, class + distillation token, or patch mean."""
    pool = getattr(model, "global_pool", "token")
    prefix = int(getattr(model, "num_prefix_tokens", 0) or 0)
    e = ref.new_zeros(batch, num_tokens)
    if pool == "token":
        if getattr(model, "head_dist", None) is not None:  # DeiT distilled: (head(cls) + head_dist(dist)) / 2
            e[:, :2] = 0.5
        else:
            e[:, 0] = 1.0
    elif pool == "avg":
        e[:, prefix:] = 1.0 / (num_tokens - prefix)
    else:
        raise ValueError(f"class_relevance supports global_pool 'token' or 'avg' (the output row of R); "
                         f"this model pools with {pool!r}")
    return e


def _weighted_maps(grad: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    """Ā = mean over heads of (∂y/∂A ⊙ A)⁺: grad (R, heads, n, n), maps (R, K, heads, n, n) -> (R, K, n, n)."""
    return (grad.unsqueeze(1) * maps).clamp_min(0).mean(dim=2)


def _vit_row_step(row: torch.Tensor, weighted: torch.Tensor) -> torch.Tensor:
    """r ← r + r Ā: row (B, K, N), weighted (B, K, N, N)."""
    return row + (row.unsqueeze(-2) @ weighted).squeeze(-2)


def _swin_row_step(row: torch.Tensor, weighted: torch.Tensor, geo: dict) -> torch.Tensor:
    """r ← r + r Ā with Ā block-diagonal over Swin's (shifted, padded) windows.

    row (B, K, Hs, Ws) on the stage grid; weighted (B·nW, K, Nw, Nw) in window order (mkviz.explain.maps docstring).
    """
    Hs, Ws = geo["resolution"]
    wh, ww = geo["window_size"]
    sh, sw = geo["shift_size"]
    B, K = row.shape[:2]
    nh, nw = -(-Hs // wh), -(-Ws // ww)
    x = torch.roll(row, shifts=(-sh, -sw), dims=(2, 3))
    x = F.pad(x, (0, nw * ww - Ws, 0, nh * wh - Hs))  # (B, K, Hp, Wp)
    x = x.reshape(B, K, nh, wh, nw, ww).permute(0, 2, 4, 1, 3, 5)  # (B, nh, nw, K, wh, ww)
    x = x.reshape(B * nh * nw, K, 1, wh * ww)  # one row per window and chart
    x = (x @ weighted).squeeze(2)  # (B·nW, K, Nw)
    x = x.reshape(B, nh, nw, K, wh, ww).permute(0, 3, 1, 4, 2, 5).reshape(B, K, nh * wh, nw * ww)
    return row + torch.roll(x[..., :Hs, :Ws], shifts=(sh, sw), dims=(2, 3))


def _to_resolution(row: torch.Tensor, resolution: Sequence[int]) -> torch.Tensor:
    """Hand a merged token's relevance to its sources in equal parts: (…, h, w) -> (…, Hs, Ws) (Swin patch merging)."""
    h, w = row.shape[-2:]
    Hs, Ws = resolution
    if (h, w) == (Hs, Ws):
        return row
    fh, fw = -(-Hs // h), -(-Ws // w)
    spread = row.repeat_interleave(fh, dim=-2).repeat_interleave(fw, dim=-1) / (fh * fw)
    return spread[..., :Hs, :Ws]


def _backward_rows(model: nn.Module, rec, names: List[str], weighted: List[torch.Tensor],
                   batch: int) -> torch.Tensor:
    """The output row of R = (I + Ā_L)···(I + Ā_1), propagated from the last layer back: (B, K, P).

    weighted: per layer (B, K, N, N) (ViT) or (B·nW, K, Nw, Nw) (Swin), K = 1 or the number of charts."""
    K = weighted[-1].shape[1]
    if names[-1] in rec.layout:  # Swin: average pooling over the last stage's tokens
        Hs, Ws = rec.layout[names[-1]]["resolution"]
        row = weighted[-1].new_full((batch, K, Hs, Ws), 1.0 / (Hs * Ws))
        for name, w in zip(reversed(names), reversed(weighted)):
            geo = rec.layout[name]
            row = _swin_row_step(_to_resolution(row, geo["resolution"]), w, geo)
        grid = patch_grid(model, rec.image_size).grid_size
        return _to_resolution(row, grid).flatten(-2)
    N = weighted[-1].shape[-1]
    row = output_row(model, N, batch, weighted[-1]).unsqueeze(1).expand(batch, K, N)
    for w in reversed(weighted):
        row = _vit_row_step(row, w)
    prefix = int(getattr(model, "num_prefix_tokens", 0) or 0)
    return row[..., prefix:]


def class_relevance(model: nn.Module, images: torch.Tensor, target: Target = None,
                    charts: bool = False) -> torch.Tensor:
    """Chefer et al.'s class relevance of every patch (module docstring), batched.

    Args:
        model: a timm ViT / DeiT / Swin, plain or converted by `mkviz.convert` (run in eval mode; restored).
        images: (B, 3, H, W) model inputs.
        target: None (each image's arg-max class), a class index, or one class per image ((B,) tensor or list).
        charts: False for the relevance through the attention the model used; True for one relevance per
            chart of the manifold layers (docs/design.md §2.9).

    Returns (B, P) (charts=False) or (B, H, P) (charts=True), P the patches of the (first-stage) patch grid in
    row-major order, unnormalised. `relevance_map` lays it on the grid or the image.
    """
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise ValueError(f"images: expected a (B, C, H, W) tensor; got {getattr(images, 'shape', type(images))}")
    with eval_mode(model), torch.enable_grad(), record_attention(model, charts=charts, detach=False) as rec:
        logits = class_logits(model(images))
    if logits.dim() != 2:
        raise ValueError(f"class_relevance needs class logits (B, classes); the model returned {tuple(logits.shape)}")
    names = [n for n in rec.layers if n in rec.attention]
    t = resolve_target(logits, target)
    score = logits.gather(1, t[:, None]).sum()  # images are independent in eval mode: one backward for all
    grads = torch.autograd.grad(score, [rec.attention[n] for n in names], allow_unused=True)
    if charts and not rec.chart_attention:
        raise ValueError("charts=True needs manifold-key layers (mkviz.convert); this model has no charts")
    K = next(iter(rec.chart_attention.values())).shape[1] if charts else 1
    weighted = []
    with torch.no_grad():
        for n, g in zip(names, grads):
            a = rec.attention[n].detach()  # (R, heads, n, n)
            g = torch.zeros_like(a) if g is None else g
            maps = rec.chart_attention[n].detach() if charts and n in rec.chart_attention else \
                a.unsqueeze(1).expand(-1, K, -1, -1, -1)  # (R, K, heads, n, n)
            weighted.append(_weighted_maps(g, maps))
        out = _backward_rows(model, rec, names, weighted, images.shape[0])  # (B, K, P)
    return out if charts else out[:, 0]


def relevance_map(relevance: torch.Tensor, model: nn.Module, image_size=None, input_size=None,
                  mode: str = "bilinear") -> torch.Tensor:
    """Lay a relevance (…, P) on the patch grid (…, gh, gw), or upsample it to `image_size` (…, H_img, W_img).

    input_size: the size of the images the relevance was computed on (default: the model's own); the grid is
    `mkviz.explain.maps.patch_grid(model, input_size)` (the first stage's grid for Swin). mode as in `upsample_map`.
    """
    gh, gw = patch_grid(model, input_size).grid_size
    if not isinstance(relevance, torch.Tensor) or relevance.shape[-1] != gh * gw:
        raise ValueError(f"relevance: expected (..., {gh * gw}) for a {gh}x{gw} patch grid; "
                         f"got {tuple(getattr(relevance, 'shape', ()))}")
    grid = relevance.reshape(*relevance.shape[:-1], gh, gw)
    if image_size is None:
        return grid
    flat = grid.reshape(-1, gh, gw)
    out = upsample_map(flat, image_size, mode)
    return out.reshape(*grid.shape[:-2], *out.shape[-2:])
