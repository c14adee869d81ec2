"""`mkviz demo --pretrained NAME --data-root DIR`: the demo's pictures for a user's pretrained timm model.

Loads timm's pretrained weights (internet needed once, then timm's cache), converts the model
function-preservingly, checks that its predictions did not change on the user's images, and
writes a report with the fused and per-chart attention of the centre patch of the last block.
Right after conversion the charts differ only by the small zero-sum δ_c: fine-tune (`mkviz train
--pretrained ...`) to see them specialise.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from timm.data import resolve_data_config

from ..core.models import convert, create_model
from ..data.registry import build_dataset
from ..explain.maps import patch_grid
from ..explain.record import record_attention
from ..viz import figures
from ..viz.report import Report


def _denormalize(images: torch.Tensor, mean, std) -> torch.Tensor:
    """(B, 3, H, W) normalised -> uint8 (B, 3, H, W)."""
    mean = torch.tensor(mean).view(1, 3, 1, 1)
    std = torch.tensor(std).view(1, 3, 1, 1)
    return ((images * std + mean).clamp(0, 1) * 255).round().to(torch.uint8)


def run_pretrained(name: str, data_root: str | None, out: Path, variant: str = "vanillak", num_charts: int = 8,
                   num_images: int = 3) -> dict[str, Any]:


    if not data_root:
        raise ValueError("--pretrained needs --data-root: a folder of images (class sub-folders or train/val/test)")
    if not Path(data_root).is_dir():
        raise FileNotFoundError(f"--data-root {data_root} does not exist")
    try:
        model = create_model(name, variant=None, pretrained=True).eval()
    except ValueError:
        raise
    except Exception as err:  # no internet, no weights for this name, ...
        raise ValueError(f"could not load timm's pretrained weights for {name!r} ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''}); they need internet once") from None
    dataset = build_dataset("imagefolder", root=data_root, split="test", model=model)
    n = min(num_images, len(dataset))
    images = torch.stack([dataset[i][0] for i in range(n)])  # (n, 3, H, W)
    converted = convert(model, variant, num_charts).eval()
    with torch.no_grad():
        logits, logits_conv = model(images), converted(images)
    agreement = (logits.argmax(-1) == logits_conv.argmax(-1)).float().mean().item()
    max_diff = (logits - logits_conv).abs().max().item()

    cfg = resolve_data_config({}, model=model)
    pictures = _denormalize(images, cfg["mean"], cfg["std"])
    layer = f"blocks.{len(converted.blocks) - 1}.attn" if hasattr(converted, "blocks") else None
    report = Report(f"mkviz demo: {name} with a {variant} key ({num_charts} charts)",
                    subtitle=f"{n} images from {data_root}; converted function-preservingly: max |Δ logits| = "
                             f"{max_diff:.1e}, top-1 agreement {agreement:.3f}.")
    with torch.no_grad(), record_attention(converted, layers=[layer] if layer else [-1]) as rec:
        converted(images)
    layer = rec.layers[-1]
    if layer in rec.layout:  # Swin: the stage grid of that block
        grid = rec.layout[layer]["resolution"]
    else:
        grid = patch_grid(converted, tuple(images.shape[-2:])).grid_size
    query = (grid[0] // 2, grid[1] // 2)
    for i in range(n):
        fused = rec.image_map(layer, query, batch_index=i)
        charts = rec.chart_maps(layer, query, batch_index=i)
        report.add_figure(f"Image {i}: {layer}, centre query", figures.chart_maps_figure(pictures[i], fused, charts,
                                                                                         query=query))
    report.add_figure(f"Chart similarity ({layer})",
                      figures.similarity_heatmap(rec.chart_similarity(layer, "cosine"), kind="cosine"))
    path = report.write(out / "report.html")
    return {"report": str(path), "max_diff": max_diff, "agreement": agreement}
