"""The data a kernel-free explorer embeds (mkviz.viz.explorer_html draws the page around it).

What `mkviz.ChartExplorer` computes from a running kernel is precomputed here, once: for every image,
recorded layer, head and patch query, the fused attention row and every chart's row over the patch keys
(rows (B, heads, G, 1 + H, G), G = gh·gw patches, as base64 float32 or float16), the per-chart statistics of
each query (entropy of the whole row over all N keys, prefix tokens included; share of the map on the
evidence mask), the chart similarity matrices of every similarity kind (`mkviz.explain.metrics.chart_similarity`,
as `ChartExplorer` computes them) and the key atlas's 2-D points (`mkviz.viz.key_atlas.key_atlas`); with
instance masks, each query's shares on the same object, the other objects and the background
(`mkviz.viz.scene_view`: "scene" (B, k, G, M, 3), NaN "same" for a query on no object; "scene_chance"
(B, G, 3), what uniform attention gives). The head
"mean" of the maps is the mean of the heads' rows (computed in the page from the embedded rows, or embedded
alone with heads="mean"); its statistics and atlas are mkviz's.

    model_data(model, x, masks, opts, scenes=None)     every array of one model on the images, stacked over the images
    encode_arrays / decode_array          arrays <-> {"shape", "dtype", "data": base64, little endian}
    model_inputs, evidence_masks, display_sources, explorer_options: the inputs, checked

Supported models: manifold-key ViT / DeiT (`mkviz.convert`, `mkviz.create_model`, checkpoints). Swin's
window attention has no page form yet: use `mkviz.ChartExplorer` in a notebook.
"""
from __future__ import annotations

import base64
import json
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..core.checks import check_choice
from ..explain import metrics
from ..explain.maps import patch_grid
from ..explain.record import record_attention
from ..explain.scene_attention import query_regions
from .figure_base import image_source
from .key_atlas import key_atlas
from .scene_view import scene_shares_by_head

__all__ = ["model_data", "encode_arrays", "decode_array", "json_script", "figure_json", "model_inputs",
           "evidence_masks", "display_sources", "explorer_options", "ROW_DTYPES", "HEAD_CHOICES"]

ROW_DTYPES = ("float32", "float16")
HEAD_CHOICES = ("all", "mean")


def model_inputs(images: Any) -> Tuple[torch.Tensor, Any]:
    """(float (B, 3, H, W) model inputs, evidence masks or None) from a tensor or a batched `Sample`."""
    masks = getattr(images, "evidence_mask", None) if hasattr(images, "image") else None
    x = images.image if hasattr(images, "image") else images
    if not isinstance(x, (torch.Tensor, np.ndarray)):
        raise ValueError(f"images: expected a float tensor (B, 3, H, W) or a batched Sample; got {type(x).__name__}")
    x = torch.as_tensor(x)
    x = x[None] if x.dim() == 3 else x
    if x.dim() != 4 or x.shape[1] not in (1, 3) or x.shape[0] < 1:
        raise ValueError(f"images: expected (B, 3, H, W) with B >= 1; got shape {tuple(x.shape)}")
    return (x.float() if x.is_floating_point() else x.float() / 255.0), masks


def evidence_masks(masks: Any, n: int, size: Tuple[int, int]) -> Optional[torch.Tensor]:
    """Evidence masks (B, H, W) as floats at the image size, or None."""
    if masks is None:
        return None
    m = torch.as_tensor(masks)
    m = m[None] if m.dim() == 2 else m
    if m.dim() != 3 or m.shape[0] != n:
        raise ValueError(f"masks: expected one evidence mask per image, (B={n}, H, W); got shape {tuple(m.shape)}")
    m = m.float()
    return m if tuple(m.shape[-2:]) == size else F.interpolate(m[:, None], size=size, mode="nearest")[:, 0]


def display_sources(display_images: Any, x: torch.Tensor) -> List[str]:
    """One PNG data URI per image: display_images (uint8 or [0, 1]) or the inputs min-max rescaled."""
    src = x if display_images is None else torch.as_tensor(display_images)
    src = src[None] if src.dim() == 3 else src
    if src.shape[0] != x.shape[0]:
        raise ValueError(f"display_images: expected {x.shape[0]} images (one per input); got {src.shape[0]}")
    return [image_source(im) for im in src]


def _check_model(model: Any, name: str = "model") -> nn.Module:
    if not isinstance(model, nn.Module):
        raise ValueError(f"{name}: expected a manifold-key torch model (mkviz.convert); got {type(model).__name__}")
    if not hasattr(model, "patch_embed"):
        raise ValueError(f"{name}: {type(model).__name__} is not a timm VisionTransformer; the HTML explorers "
                         "support manifold-key ViT / DeiT (Swin: mkviz.ChartExplorer in a notebook)")
    return model


def explorer_options(layers: Any, heads: str, dtype: str, similarity: Sequence[str], maps_: str, atlas: bool) -> dict:
    check_choice("heads", heads, HEAD_CHOICES)
    check_choice("dtype", dtype, ROW_DTYPES)
    if isinstance(similarity, str) or not similarity or any(k not in metrics.SIMILARITY_KINDS for k in similarity):
        raise ValueError(f"similarity: expected a non-empty sequence of {metrics.SIMILARITY_KINDS}; got {similarity!r}")
    return dict(layers=layers, heads=heads, dtype=dtype, similarity=list(similarity), maps=maps_, atlas=bool(atlas))


def _head_stack(attn: torch.Tensor, heads: str) -> torch.Tensor:
    """(M, heads, N, N) maps -> (M, k, N, N): the head mean first, then (heads="all") every head."""
    mean = attn.mean(1, keepdim=True)
    return torch.cat([mean, attn], 1) if heads == "all" else mean


def _head_options(num_heads: int, heads: str) -> List[Optional[int]]:
    return [None] + (list(range(num_heads)) if heads == "all" else [])


def _shares(patch_maps: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    """Share of each map's mass on the evidence: (..., G) maps, (G,) coverage -> (...)."""
    return ((patch_maps * cov).sum(-1) / patch_maps.sum(-1).clamp_min(1e-12)).clamp(0.0, 1.0)


def _similarities(rec: Any, layer: str, heads: List[Optional[int]], kinds: Sequence[str]) -> Dict[str, np.ndarray]:
    """{kind: (k, H, H)} for each head option, as `ChartExplorer` computes them (one image)."""
    keys, attn = rec.chart_keys[layer], rec.chart_attention[layer]  # (1, H, N, C), (1, H, heads, N, N)
    d = keys.shape[-1] // attn.shape[2]
    out = {}
    for kind in kinds:
        mats = []
        for h in heads:
            if kind == "js":
                a = attn if h is None else attn[:, :, h:h + 1]
                mats.append(metrics.chart_similarity(chart_attn=a, kind="js"))
            else:
                k = keys if h is None else keys[..., h * d:(h + 1) * d]
                mats.append(metrics.chart_similarity(chart_keys=k, kind=kind))
        out[kind] = torch.stack(mats).numpy()
    return out


def _atlas_points(rec: Any, layer: str, heads: List[Optional[int]]) -> np.ndarray:
    """(k, (1 + H)·N, 2): the points of `key_atlas` (queries, then each chart's keys) per head option."""
    out = []
    for h in heads:
        fig = key_atlas(rec, layer, head=h)
        out.append(np.concatenate([np.stack([np.asarray(t.x), np.asarray(t.y)], -1) for t in fig.data[:-1]]))
    return np.stack(out).astype(np.float32)


def _atlas_template(rec: Any, layer: str) -> dict:
    """`key_atlas` of the first image and layer (head mean) with its points emptied (the page fills them)."""
    spec = figure_json(key_atlas(rec, layer))
    for t in spec["data"]:
        t.update(x=[], y=[])
    return spec


def _layer_data(rec: Any, layer: str, grid: Any, cov: Optional[torch.Tensor], opts: dict,
                regions: Optional[torch.Tensor] = None) -> dict:
    """One image's arrays for one layer: rows (k_rows, G, M, G), entropy and evidence (k, G, M), similarity, atlas;
    with regions (G, 3, G) (`query_regions`), scene (k, G, M, 3)."""
    p = grid.num_prefix_tokens
    fused = rec.attention[layer][0][None]  # (1, heads, N, N)
    charts = rec.chart_attention[layer][0]  # (H, heads, N, N)
    allmaps = fused if opts["maps"] == "fused" else torch.cat([fused, charts])  # (M, heads, N, N)
    patch = allmaps[:, :, p:, p:]  # (M, heads, G, G)
    rows = patch if opts["heads"] == "all" else patch.mean(1, keepdim=True)
    stacked = _head_stack(allmaps[:, :, p:], opts["heads"])  # (M, k, G, N): the patch queries' whole rows
    out = dict(rows=rows.permute(1, 2, 0, 3).numpy(),
               entropy=metrics.attention_entropy(stacked).permute(1, 2, 0).numpy())
    if cov is not None:
        out["evidence"] = _shares(stacked[..., p:], cov).permute(1, 2, 0).numpy()
    if regions is not None:
        scene = scene_shares_by_head(patch, regions)  # (M, 1 + heads, G, 3)
        out["scene"] = (scene if opts["heads"] == "all" else scene[:, :1]).permute(1, 2, 0, 3).numpy()
    heads = _head_options(fused.shape[1], opts["heads"])
    if opts["maps"] == "charts":
        out["similarity"] = _similarities(rec, layer, heads, opts["similarity"])
    if opts["atlas"]:
        out["atlas"] = _atlas_points(rec, layer, heads)
    return out


def _record_image(model: nn.Module, x: torch.Tensor, layers: Any) -> Tuple[Any, torch.Tensor]:
    """(full recording of one image (1, 3, H, W), class probabilities (classes,))."""
    with torch.no_grad(), record_attention(model, layers=layers, charts=True, to_cpu=True,
                                                 dtype=torch.float32) as rec:
        logits = model(x.to(next(model.parameters()).device))
    return rec, logits.detach().float().softmax(-1)[0].cpu()


def _manifold_layers(rec: Any, model: nn.Module, name: str) -> List[str]:
    if rec.layout:
        raise ValueError(f"{name}: Swin window attention has no HTML explorer; use mkviz.ChartExplorer in a notebook")
    layers = [n for n in rec.layers if n in rec.chart_attention]
    if not layers:
        raise ValueError(f"{name}: {type(model).__name__} has no recorded manifold-key attention layer: convert it "
                         "first (mkviz.convert(model, variant, num_charts)) or choose layers= among its manifold "
                         "layers")
    return layers


def model_data(model: nn.Module, x: torch.Tensor, masks: Optional[torch.Tensor], opts: dict,
               name: str = "model", scenes: Optional[Sequence[torch.Tensor]] = None) -> dict:
    """Every embedded array of one model on images x (B, 3, H, W): {"charts", "heads", "grid", "layers":
    {layer: {array: (B, ...)}}, "predicted": [(class, p)], "scene_chance": (B, G, 3) or None} (arrays stacked
    over the images). scenes: B instance masks (K_b, H, W) (`instance_masks_list`) or None."""
    model = _check_model(model, name).eval()
    grid = patch_grid(model, tuple(x.shape[-2:]))
    per_image, predicted, layers, chance = [], [], None, []
    for i in range(x.shape[0]):
        rec, probs = _record_image(model, x[i:i + 1], opts["layers"])
        layers = layers or _manifold_layers(rec, model, name)
        cov = None if masks is None else metrics.patch_coverage(masks[i], grid.grid_size).reshape(-1)
        regions = None if scenes is None else query_regions(scenes[i], grid.grid_size)[1]  # (G, 3, G)
        if regions is not None:
            chance.append(regions.mean(-1).numpy())  # (G, 3)
        per_image.append({l: _layer_data(rec, l, grid, cov, opts, regions) for l in layers})
        predicted.append((int(probs.argmax()), float(probs.max())))
        if i == 0 and opts["atlas"]:
            atlas = _atlas_template(rec, layers[0])
    first = model.get_submodule(layers[0])
    stacked = {l: {k: (np.stack([im[l][k] for im in per_image]) if k != "similarity" else
                       {s: np.stack([im[l][k][s] for im in per_image]) for s in per_image[0][l][k]})
                   for k in per_image[0][l]} for l in layers}
    return dict(charts=int(first.key.num_charts), heads=int(first.num_heads), grid=grid, layers=stacked,
                predicted=predicted, atlas_template=atlas if opts["atlas"] else None,
                scene_chance=np.stack(chance).astype(np.float32) if chance else None)


def _b64(a: np.ndarray, dtype: str = "float32") -> str:
    return base64.b64encode(np.ascontiguousarray(a, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()).decode("ascii")


def encode_arrays(arrays: dict, dtype: str) -> dict:
    out = {}
    for k, v in arrays.items():
        if k == "similarity":
            out[k] = {s: dict(shape=list(m.shape), data=_b64(m)) for s, m in v.items()}
        else:
            out[k] = dict(shape=list(v.shape), dtype=dtype if k == "rows" else "float32",
                          data=_b64(v, dtype if k == "rows" else "float32"))
    return out


def decode_array(entry: dict) -> np.ndarray:
    raw = base64.b64decode(entry["data"])
    return np.frombuffer(raw, dtype=np.dtype(entry.get("dtype", "float32")).newbyteorder("<")).reshape(entry["shape"])


def json_script(payload: dict) -> str:
    text = json.dumps(payload, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def figure_json(fig: Any) -> dict:
    import plotly.io as pio
    return json.loads(pio.to_json(fig, validate=False))
