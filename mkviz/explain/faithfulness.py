"""Is a saliency map faithful? Deletion and insertion curves (Petsiuk et al., RISE, BMVC 2018).

    out = mkviz.deletion_insertion(model, images, saliency)    # saliency (B, gh, gw) or (B, P)
    out["deletion_auc"], out["insertion_auc"]                   # (B,) each; lower / higher is better
    out["deletion"], out["insertion"], out["fractions"]        # the curves (B, S + 1), the x axis (S + 1,)

Deletion: patches are replaced by the baseline in order of decreasing saliency, a few at a time (`steps`
points), and the target's softmax probability is tracked: a faithful map makes it drop fast (small area
under the curve). Insertion starts from the baseline image and puts the patches back in the same order: a
faithful map makes it rise fast (large area). The area is the trapezoid rule over the fraction of patches
changed, in [0, 1].

Baselines (`baseline=`):
    "mean"   (default) 0 everywhere: the dataset mean after the usual (x − mean) / std normalisation,
             i.e. a patch is replaced by "average pixels" (for Fashion-MNIST: the mean grey);
    "blur"   a Gaussian blur of the image (σ = one patch side; torchvision's `gaussian_blur`), which
             removes a patch's detail but keeps its colour (less out-of-distribution than a flat patch);
    a number or a tensor shaped like the images (or one image).

The target is the arg-max class of each original image unless given. Ties in the saliency keep patch order
(a stable sort), so a constant map deletes patches row by row.

Ranking maps (`saliency_maps`, `compare_saliency`, `faithfulness_table`), each on the patch grid, for the
target class where the method has one:
    "attention"        the last layer's attention from the output token(s) to the patches, heads averaged
                       (what the classifier reads: the class token's row for a class-token ViT);
    "chart c"          the same row of chart c's map (manifold-key models; docs/design.md §2.8);
    "rollout"          the same row of `mkviz.explain.metrics.attention_rollout` over every layer;
    "relevance"        `mkviz.class_relevance` (Chefer et al.);
    "ig"               captum integrated gradients on the patch embedding (`mkviz.layer_integrated_gradients`,
                       zero baseline), summed over channels: one signed number per patch;
    "random"           a random order (seeded): the reference every map should beat.
ViT / DeiT only (the attention rows need a token sequence with the patch grid).
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from torch.nn import functional as F

from ..core.models import class_logits
from ..core.switches import eval_mode
from .attribution import layer_integrated_gradients
from .maps import patch_grid
from .metrics import attention_rollout
from .record import record_attention
from .relevance import class_relevance, output_row, resolve_target

__all__ = ["deletion_insertion", "perturbation_curves", "saliency_grid", "patch_order", "baseline_images", "BASELINES",
           "saliency_maps", "compare_saliency", "faithfulness_table"]

BASELINES = ("mean", "blur")
BATCH_SIZE = 256  # perturbed images per forward
Baseline = Union[str, float, torch.Tensor]


def baseline_images(images: torch.Tensor, baseline: Baseline, patch: Tuple[int, int]) -> torch.Tensor:
    """The image every patch is replaced by: (B, C, H, W) (module docstring)."""
    if isinstance(baseline, str):
        if baseline == "mean":
            return torch.zeros_like(images)
        if baseline == "blur":
            from torchvision.transforms.functional import gaussian_blur
            sigma = float(max(patch))
            size = 2 * math.ceil(2 * sigma) + 1
            return gaussian_blur(images, [size, size], [sigma, sigma])
        raise ValueError(f"baseline: expected one of {BASELINES}, a number or a tensor; got {baseline!r}")
    if isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        return torch.full_like(images, float(baseline))
    if isinstance(baseline, torch.Tensor) and baseline.shape in (images.shape, images.shape[1:]):
        return baseline.to(images).expand_as(images)
    raise ValueError(f"baseline: expected one of {BASELINES}, a number or a tensor of shape {tuple(images.shape)} "
                     f"or {tuple(images.shape[1:])}; got {baseline!r}")


def saliency_grid(saliency: torch.Tensor, images: torch.Tensor, grid: Optional[Tuple[int, int]]) -> torch.Tensor:
    """The saliency as (B, gh, gw): on the model's patch grid `grid`, from (B, gh, gw) or (B, P) with P = gh·gw;
    for a model without a patch grid (grid None), a (B, gh, gw) map whose grid divides the image. Anything else
    is a ValueError naming `saliency` and the expected shape."""
    B, size = images.shape[0], tuple(images.shape[-2:])
    shape = tuple(getattr(saliency, "shape", ()))
    if grid is not None:
        gh, gw = grid
        ok = shape in ((B, gh, gw), (B, gh * gw))
        expected = f"({B}, {gh}, {gw}) or ({B}, {gh * gw}) for {B} images on the model's {gh}x{gw} patch grid"
    else:
        ok = len(shape) == 3 and shape[0] == B and size[0] % shape[1] == 0 and size[1] % shape[2] == 0
        expected = f"({B}, gh, gw) with a grid that divides the {size[0]}x{size[1]} image"
    if not isinstance(saliency, torch.Tensor) or not ok:
        raise ValueError(f"saliency: expected {expected}; got {shape if shape else type(saliency).__name__}")
    return saliency.detach().float().reshape(B, *(grid or shape[1:]))


def patch_order(saliency: torch.Tensor) -> torch.Tensor:
    """Patch indices (row-major) by decreasing saliency, ties in index order: (B, gh, gw) -> (B, P)."""
    return torch.sort(saliency.flatten(1), dim=1, descending=True, stable=True).indices


def _step_masks(order: torch.Tensor, grid: Tuple[int, int], counts: Sequence[int],
                size: Tuple[int, int]) -> torch.Tensor:
    """For each image and step, the pixels of the first counts[s] patches of `order`: (B, S + 1, 1, H, W) in {0, 1}."""
    B, P = order.shape
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(P, device=order.device).expand(B, P))  # rank of each patch
    chosen = rank[:, None, :] < torch.as_tensor(counts, device=order.device)[None, :, None]  # (B, S + 1, P)
    cells = chosen.float().reshape(B * len(counts), 1, *grid)
    return F.interpolate(cells, size=size, mode="nearest-exact").reshape(B, len(counts), 1, *size)


def _probabilities(model: nn.Module, batch: torch.Tensor, target: torch.Tensor, chunk: int) -> torch.Tensor:
    """Softmax probability of target[i] for batch[i]: (n, C, H, W) -> (n,)."""
    out = []
    for start in range(0, batch.shape[0], chunk):
        logits = class_logits(model(batch[start:start + chunk]))
        out.append(logits.float().softmax(-1).gather(1, target[start:start + chunk, None])[:, 0])
    return torch.cat(out)


def deletion_insertion(model: nn.Module, images: torch.Tensor, saliency: torch.Tensor,
                       target: Union[None, int, Sequence[int], torch.Tensor] = None, steps: Optional[int] = None,
                       baseline: Baseline = "mean", batch_size: int = BATCH_SIZE) -> Dict[str, torch.Tensor]:
    """Deletion and insertion curves of a patch saliency map (module docstring).

    Args:
        model: any classifier of `images` (eval mode while it runs; restored).
        images: (B, C, H, W) model inputs.
        saliency: (B, gh, gw) or (B, P) on the model's patch grid (gh, gw), P = gh·gw; for a model without
            a patch grid, (B, gh, gw) on a grid that divides the image.
        target: None (arg-max on the original image), a class, or one class per image.
        steps: points along each curve after the first (default: every patch, one at a time).
        baseline: "mean", "blur", a number or a tensor (module docstring).
        batch_size: images per forward.

    Returns a dict of tensors: "deletion", "insertion" (B, steps + 1) probabilities, "fractions" (steps + 1,)
    share of patches changed, "deletion_auc", "insertion_auc" (B,), "order" (B, P) the patch order used,
    "target" (B,).
    """
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise ValueError(f"images: expected a (B, C, H, W) tensor; got {getattr(images, 'shape', type(images))}")
    grid = patch_grid(model, tuple(images.shape[-2:])).grid_size if hasattr(model, "patch_embed") else None
    grid_map = saliency_grid(saliency, images, grid)
    with eval_mode(model), torch.no_grad():
        t = resolve_target(class_logits(model(images)), target)
        return perturbation_curves(model, images, grid_map, t, steps, baseline, batch_size)


def perturbation_curves(model: nn.Module, images: torch.Tensor, grid_map: torch.Tensor, target: torch.Tensor,
                        steps: Optional[int], baseline: Baseline, batch_size: int) -> Dict[str, torch.Tensor]:
    """`deletion_insertion` for a model already in eval mode, a saliency map already on its patch grid
    (B, gh, gw) and resolved targets (B,): the part of the work that differs from map to map."""
    B, gh, gw = grid_map.shape
    P, size = gh * gw, tuple(images.shape[-2:])
    steps = P if steps is None else steps
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= P:
        raise ValueError(f"steps: expected an int in [1, {P}] (the patches); got {steps!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected an int >= 1; got {batch_size!r}")
    counts = [round(P * s / steps) for s in range(steps + 1)]
    order = patch_order(grid_map)
    base = baseline_images(images, baseline, (size[0] // gh, size[1] // gw))
    curves = {"deletion": [], "insertion": []}
    for i in range(B):  # one image's S + 1 steps at a time: memory (S + 1) images, not B (S + 1)
        masks = _step_masks(order[i:i + 1].to(images.device), (gh, gw), counts, size)[0]  # (S + 1, 1, H, W)
        x, b = images[i:i + 1], base[i:i + 1]
        tt = target[i:i + 1].expand(steps + 1)
        curves["deletion"].append(_probabilities(model, x * (1 - masks) + b * masks, tt, batch_size))
        curves["insertion"].append(_probabilities(model, b * (1 - masks) + x * masks, tt, batch_size))
    deletion, insertion = (torch.stack(curves[k]).cpu() for k in ("deletion", "insertion"))
    fractions = torch.tensor(counts, dtype=torch.float32) / P
    return dict(deletion=deletion, insertion=insertion, fractions=fractions,
                deletion_auc=torch.trapezoid(deletion, fractions, dim=1),
                insertion_auc=torch.trapezoid(insertion, fractions, dim=1), order=order.cpu(), target=target.cpu())


def _output_attention(model: nn.Module, attn: torch.Tensor) -> torch.Tensor:
    """The classifier's row of an attention (B, heads, N, N) or (B, N, N) over the patches: (B, P)."""
    a = attn.float().mean(1) if attn.dim() == 4 else attn.float()  # (B, N, N)
    B, N, _ = a.shape
    row = output_row(model, N, B, a)  # (B, N)
    prefix = int(getattr(model, "num_prefix_tokens", 0) or 0)
    return (row.unsqueeze(1) @ a).squeeze(1)[:, prefix:]


def saliency_maps(model: nn.Module, images: torch.Tensor, target=None, ig_steps: int = 32,
                  seed: int = 0) -> Dict[str, torch.Tensor]:
    """Every ranking map of the module docstring for `images`: {name: (B, gh, gw)}, in a fixed order."""
    with eval_mode(model):
        return _saliency_maps(model, images, target, ig_steps, seed)[0]


def _saliency_maps(model: nn.Module, images: torch.Tensor, target, ig_steps: int,
                   seed: int) -> Tuple[Dict[str, torch.Tensor], torch.Tensor]:
    """`saliency_maps` for a model already in eval mode, and the resolved targets (B,): its recorded forward is
    the clean forward the targets come from."""
    grid = patch_grid(model, tuple(images.shape[-2:])).grid_size
    with torch.no_grad(), record_attention(model, charts=True) as rec:
        t = resolve_target(class_logits(model(images)), target)
    last = rec.layers[-1]
    if last in rec.layout:
        raise ValueError("saliency_maps: the attention rows need a ViT / DeiT (Swin's windows have no output row)")
    maps = {"attention": _output_attention(model, rec.attention[last])}
    if last in rec.chart_attention:
        for c in range(rec.chart_attention[last].shape[1]):
            maps[f"chart {c + 1}"] = _output_attention(model, rec.chart_attention[last][:, c])
    maps["rollout"] = _output_attention(model, attention_rollout([rec.attention[n] for n in rec.layers]))
    maps["relevance"] = class_relevance(model, images, t)
    maps["ig"] = layer_integrated_gradients(model, images, t, n_steps=ig_steps).detach().flatten(1)
    g = torch.Generator().manual_seed(seed)
    maps["random"] = torch.rand(images.shape[0], grid[0] * grid[1], generator=g)
    return {k: v.detach().float().cpu().reshape(-1, *grid) for k, v in maps.items()}, t


def compare_saliency(model: nn.Module, images: torch.Tensor, target=None, steps: Optional[int] = None,
                     baseline: Baseline = "mean", ig_steps: int = 32, seed: int = 0) -> Dict[str, Dict[str, torch.Tensor]]:
    """`deletion_insertion` of every map of `saliency_maps`, all for the same target: {name: result dict}.

    The shared work is done once: eval mode, the patch grid, the clean forward (recorded: the attention maps
    and the target come from it); each map then costs only its perturbed forwards."""
    with eval_mode(model):
        maps, t = _saliency_maps(model, images, target, ig_steps, seed)
        with torch.no_grad():
            return {name: perturbation_curves(model, images, m.to(images.device), t, steps, baseline, BATCH_SIZE)
                    for name, m in maps.items()}


def faithfulness_table(results: Dict[str, Dict[str, torch.Tensor]]) -> list:
    """Rows {"method", "deletion_auc", "insertion_auc", "gap"} (means over the images; gap = insertion − deletion,
    higher is better) of a `compare_saliency` result, in its order."""
    rows = []
    for name, r in results.items():
        d, i = float(r["deletion_auc"].mean()), float(r["insertion_auc"].mean())
        rows.append({"method": name, "deletion_auc": d, "insertion_auc": i, "gap": i - d})
    return rows
