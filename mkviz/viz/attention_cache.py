"""The explorers' cache: one lazy recorded forward per image (an LRU of `cache_size` images), from which a slider
move computes only the query's attention rows, fused and per chart (`AttentionCache`).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn

from ..core.attention import ManifoldQKV, ManifoldWindowAttention
from ..explain import metrics
from ..explain.maps import patch_grid, query_index, swin_block_geometry
from ..explain.metrics import SIMILARITY_KINDS
from ..explain.record import record_attention

__all__ = ["AttentionCache", "head_index", "evidence_share"]


Head = Optional[int]


def head_index(value: Any) -> Head:
    """A head picker's value as a head index, or None for "mean" (the heads averaged)."""
    return None if value in (None, "mean") else int(value)


# --------------------------------------------------------------------------- the cached recordings
class AttentionCache:
    """Recordings of one model on a fixed set of images, computed once per image and sliced on demand.

    model: a manifold-key ViT/DeiT/Swin (`mkviz.convert`); images: float (B, 3, H, W) model inputs.
    `entry(i)` runs the forward for image i once (LRU of `cache_size` images); `maps`, `similarity` and
    `stats` slice the cached tensors.
    """

    def __init__(self, model: nn.Module, images: torch.Tensor, cache_size: int = 4) -> None:
        self.model = model.eval()
        if not isinstance(images, torch.Tensor) or images.dim() != 4:
            raise ValueError(f"images: expected a float tensor (B, 3, H, W); got "
                             f"{getattr(images, 'shape', type(images).__name__)}")
        self.images = images if images.is_floating_point() else images.float() / 255.0
        self.cache_size = max(1, int(cache_size))
        self.layers = [n for n, m in model.named_modules() if isinstance(m, ManifoldQKV)]
        if not self.layers:
            raise ValueError(f"{type(model).__name__} has no manifold-key attention layer: convert it first "
                             "(mkviz.convert(model, variant, num_charts)); plain timm attention has no charts")
        self.image_size = (int(images.shape[-2]), int(images.shape[-1]))
        self.is_swin = any(isinstance(model.get_submodule(n), ManifoldWindowAttention) for n in self.layers)
        self.geometry: Dict[str, dict] = {}
        if self.is_swin:
            for name in self.layers:
                parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else None
                try:
                    geo = swin_block_geometry(parent)
                except ValueError:
                    raise ValueError(f"{type(model).__name__}: window attention {name!r} is not inside a timm "
                                     "SwinTransformerBlock; only timm SwinTransformer layouts are supported") from None
                self.geometry[name] = dict(kind="swin", grid=geo["resolution"], **geo)
        else:
            if not hasattr(model, "patch_embed"):
                raise ValueError(f"unsupported model {type(model).__name__}: the explorers support timm "
                                 "VisionTransformer (ViT, DeiT) and SwinTransformer models")
            grid = patch_grid(model, self.image_size)
            for name in self.layers:
                self.geometry[name] = dict(kind="vit", grid=grid.grid_size, prefix=grid.num_prefix_tokens)
        first = model.get_submodule(self.layers[0])
        self.num_heads = int(first.num_heads)
        self.num_charts = int(first.key.num_charts)
        self.device = next(model.parameters()).device
        self._entries: "OrderedDict[int, dict]" = OrderedDict()
        self._memo: Dict[tuple, Any] = {}
        self.forwards = 0

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def entry(self, i: int) -> dict:
        """{"recording": a lazy `AttentionRecording` of image i (batch dim 1), "probs": (classes,)}.

        Lazy: per layer it keeps x, q and k, not the (1 + H) N × N maps; `maps` reads one query's rows."""
        i = int(i)
        if i in self._entries:
            self._entries.move_to_end(i)
            return self._entries[i]
        with torch.no_grad(), record_attention(self.model, layers=self.layers, charts=True, to_cpu=True,
                                               dtype=torch.float32, lazy=True) as rec:
            logits = self.model(self.images[i:i + 1].to(self.device))
        self.forwards += 1
        e = dict(recording=rec,
                 probs=logits.detach().float().softmax(-1)[0].cpu() if logits.dim() == 2 else None)
        self._entries[i] = e
        while len(self._entries) > self.cache_size:
            old, _ = self._entries.popitem(last=False)
            self._memo = {k: v for k, v in self._memo.items() if k[1] != old}
        return e

    def maps(self, i: int, layer: str, head: Head, query: Tuple[int, int]) -> Tuple[torch.Tensor, torch.Tensor,
                                                                                   torch.Tensor, torch.Tensor]:
        """(fused map (gh, gw), chart maps (H, gh, gw), fused row, chart rows) for one query.

        Maps equal `rec.image_map(layer, query, chart=c, head=head)`. Rows are the attention rows the
        entropy is taken over: (N,) / (H, N) over all keys (prefix tokens included) for ViT; the map itself
        (the query's window, flattened) for Swin. Only this query's rows are computed (`attention_rows`).
        """
        rec, geo = self.entry(i)["recording"], self.geometry[layer]
        with torch.no_grad():
            if geo["kind"] == "vit":
                rows = self.query_rows(i, layer, query)
                a, ca = rows[0], rows[1:]  # (heads, N), (H, heads, N)
                frow = a.mean(0) if head is None else a[head]
                crow = ca.mean(1) if head is None else ca[:, head]
                gh, gw = geo["grid"]
                p = geo["prefix"]
                return frow[p:].reshape(gh, gw), crow[:, p:].reshape(-1, gh, gw), frow, crow
            q = (int(query[0]), int(query[1]))
            fused = rec.image_map(layer, q, head=head)
            charts = rec.chart_maps(layer, q, head=head)
        return fused, charts, fused.reshape(-1), charts.flatten(1)

    def query_rows(self, i: int, layer: str, query: Tuple[int, int]) -> torch.Tensor:
        """(1 + H, heads, N) attention rows of one query of a ViT layer: the fused map's, then each chart's."""
        rec, geo = self.entry(i)["recording"], self.geometry[layer]
        if geo["kind"] != "vit":
            raise ValueError(f"query_rows: {layer} is Swin window attention; rows are for ViT layers")
        idx = query_index(int(query[0]), int(query[1]), geo["grid"], geo["prefix"])
        with torch.no_grad():
            a = rec.attention_rows(layer, [idx])[0, :, 0]  # (heads, N)
            ca = [rec.attention_rows(layer, [idx], chart=c)[0, :, 0] for c in range(self.num_charts)]
        return torch.stack([a, *ca])

    def similarity(self, i: int, layer: str, head: Head, kind: str) -> torch.Tensor:
        """(H, H) chart similarity of a layer: cosine / CKA of the chart keys (restricted to the head's channels
        when a head is chosen), or JS divergence of the chart attention (of that head; mean over heads)."""
        if kind not in SIMILARITY_KINDS:
            raise ValueError(f"kind: expected one of {SIMILARITY_KINDS}; got {kind!r}")
        key = ("sim", int(i), layer, head, kind)
        if key not in self._memo:
            rec = self.entry(i)["recording"]
            with torch.no_grad():
                if kind == "js":  # every row of every chart: computed once per (image, layer, head), then memoised
                    ca = torch.stack([rec.full_attention(layer, c) for c in range(self.num_charts)], dim=1)
                    out = metrics.chart_similarity(chart_attn=ca if head is None else ca[:, :, head:head + 1],
                                                    kind="js")
                else:
                    keys = rec.chart_keys_for(layer)
                    if head is not None:
                        d = keys.shape[-1] // self.num_heads
                        keys = keys[..., head * d:(head + 1) * d]
                    out = metrics.chart_similarity(chart_keys=keys, kind=kind)
            self._memo[key] = out
        return self._memo[key]

    def coverage(self, mask: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
        """Patch coverage (gh*gw,) of an evidence mask on a token grid (`mkviz.explain.metrics.patch_coverage`)."""
        return metrics.patch_coverage(mask, grid)

def evidence_share(map_: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    """Share of a map's mass on the evidence (per map, leading dims kept); 0 where a map has no mass."""
    flat = map_.reshape(*map_.shape[:-2], -1)
    return ((flat * cov).sum(-1) / flat.sum(-1).clamp_min(1e-12)).clamp(0.0, 1.0)
