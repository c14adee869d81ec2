"""mkviz.relevance: Chefer et al.'s class relevance against a hand-computed reference, one decisive patch, Swin."""
from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

import mkviz
from mkviz.explain.maps import swin_window_attention_to_image
from mkviz.explain.relevance import class_relevance, relevance_map
from conftest import small_swin, small_vit

pytestmark = pytest.mark.usefixtures("one_thread")


def _images(b=3, size=32, seed=0):
    return torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _spread_weights(model, std=0.2, seed=0):
    """Random weights large enough for the gradients to matter (timm's init makes them tiny)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return model.eval()


def _attention_with_grads(model, images, target):
    """Every block's softmax output A (eager path, attn_drop's input) and ∂y_target/∂A, by plain hooks."""
    maps = []

    def keep(_module, args):
        args[0].retain_grad()
        maps.append(args[0])

    handles = [m.attn_drop.register_forward_pre_hook(keep) for m in model.modules() if hasattr(m, "fused_attn")]
    flags = [(m, m.fused_attn) for m in model.modules() if hasattr(m, "fused_attn")]
    for m, _ in flags:
        m.fused_attn = False
    try:
        out = model(images)
        out.gather(1, target[:, None]).sum().backward()
    finally:
        for h in handles:
            h.remove()
        for m, f in flags:
            m.fused_attn = f
    return [(a.detach(), a.grad) for a in maps]


def test_relevance_equals_the_hand_computed_rule_on_a_two_block_vit():
    """R = I; R += mean_h((∇A ⊙ A)⁺) R per block, as N × N matrices (the reference code's loop); row of cls."""
    torch.manual_seed(0)
    model = _spread_weights(small_vit())
    x = _images()
    target = torch.tensor([1, 4, 0])
    pairs = _attention_with_grads(model, x, target)
    assert len(pairs) == 2
    N = pairs[0][0].shape[-1]
    expected = []
    for b in range(3):
        R = torch.eye(N)
        for a, g in pairs:
            R = R + (g[b] * a[b]).clamp(min=0).mean(0) @ R
        expected.append(R[0, 1:])
    expected = torch.stack(expected)  # (3, 16)
    got = class_relevance(model, x, target=target)
    assert got.shape == (3, 16)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)
    assert expected[:, :].std(1).min() > 1e-3  # a real map, not the uniform residual
    # target=None is each image's arg-max; a list works like a tensor; an int applies to every image
    with torch.no_grad():
        top = model(x).argmax(1)
    torch.testing.assert_close(class_relevance(model, x), class_relevance(model, x, target=top.tolist()))
    torch.testing.assert_close(class_relevance(model, x, target=2)[1], class_relevance(model, x[1:2], target=2)[0],
                               rtol=1e-5, atol=1e-7)
    assert model.blocks[0].attn.fused_attn and not model.training


def test_one_patch_decides_the_class():
    """A ViT trained on noise images whose label is the sign of ONE patch's mean: relevance lands on that patch."""
    torch.manual_seed(0)
    model = small_vit(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, num_classes=2)
    decisive = 5  # patch (1, 1) of the 4 × 4 grid: pixels 4..7 × 4..7

    def batch(n, g):
        x = torch.randn(n, 3, 16, 16, generator=g)
        return x, (x[:, :, 4:8, 4:8].mean((1, 2, 3)) > 0).long()

    g = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(300):
        x, y = batch(64, g)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    x, y = batch(64, torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (model(x).argmax(1) == y).float().mean() >= 0.9
    rel = class_relevance(model, x)
    share = rel[:, decisive] / rel.sum(1)
    assert (rel.argmax(1) == decisive).float().mean() >= 0.9
    assert share.mean() >= 0.6  # of 16 patches: 1/16 = 0.06 at chance


def test_converted_model_at_step_zero_gives_the_plain_relevance_and_charts_follow_the_definition():
    torch.manual_seed(0)
    plain = _spread_weights(small_vit())
    x = _images()
    ref = class_relevance(plain, x)
    mk = mkviz.convert(plain, "vanillak", num_charts=4, seed=1)
    torch.testing.assert_close(class_relevance(mk, x), ref, rtol=1e-4, atol=1e-6)
    per_chart = class_relevance(mk, x, charts=True)
    assert per_chart.shape == (3, 4, 16)
    assert (per_chart - ref[:, None]).abs().max() > 1e-4  # the perturbed charts differ from the fused map
    # without the perturbation every chart's map is the fused map: every chart's relevance is the fused one
    same = mkviz.convert(plain, "vanillak", num_charts=4, perturbation=0.0)
    torch.testing.assert_close(class_relevance(same, x, charts=True), ref[:, None].expand(-1, 4, -1),
                               rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="charts=True needs manifold-key layers"):
        class_relevance(plain, x, charts=True)
    with pytest.raises(ValueError, match=r"target: classes must lie in \[0, 5\)"):
        class_relevance(plain, x, target=7)
    with pytest.raises(ValueError, match="target: expected one class per image"):
        class_relevance(plain, x, target=[1, 2])


def test_swin_relevance_through_windows_equals_the_full_grid_rule():
    """Swin: each layer's Ā placed in the stage grid row by row (maps.swin_window_attention_to_image), patch
    merging splitting a token's relevance over its 2 × 2 sources, the mean over the last stage as the output."""
    torch.manual_seed(0)
    model = _spread_weights(small_swin(), std=0.6)
    x = _images(2)
    target = torch.tensor([0, 3])
    pairs = _attention_with_grads(model, x, target)
    geos = [mkviz.maps.swin_block_geometry(b) for s in model.layers for b in s.blocks]
    got = class_relevance(model, x, target=target)
    assert got.shape == (2, 256)
    for b in range(2):
        row = None
        for (a, g), geo in reversed(list(zip(pairs, geos))):
            H, W = geo["resolution"]
            if row is None:
                row = torch.full((H * W,), 1.0 / (H * W))
            elif row.numel() != H * W:  # merged token -> its 2 x 2 sources
                h = int(row.numel() ** 0.5)
                row = row.view(h, h).repeat_interleave(2, 0).repeat_interleave(2, 1).reshape(-1) / 4
            weighted = (g * a).clamp(min=0).mean(1)  # (B·nW, Nw, Nw)
            full = torch.stack([swin_window_attention_to_image(weighted, (r, c), geo["resolution"],
                                                               geo["window_size"], geo["shift_size"],
                                                               batch_index=b).reshape(-1)
                                for r in range(H) for c in range(W)])  # (N, N): row q = Ā[q, :]
            row = row + row @ full
        torch.testing.assert_close(got[b], row, rtol=1e-5, atol=1e-8)
    assert (got.std(1) / got.mean(1)).min() > 0.05  # a real map, not the uniform pooling row
    mk = mkviz.convert(model, "kua", num_charts=2)
    torch.testing.assert_close(class_relevance(mk, x, target=target), got, rtol=1e-4, atol=1e-7)
    assert class_relevance(mk, x, target=target, charts=True).shape == (2, 2, 256)


def test_relevance_map_lays_patches_on_the_grid_and_the_image():
    torch.manual_seed(0)
    model = small_vit()
    rel = torch.arange(2 * 16, dtype=torch.float32).view(2, 16)
    grid = relevance_map(rel, model)
    assert grid.shape == (2, 4, 4) and grid[1, 2, 3] == rel[1, 2 * 4 + 3]
    img = relevance_map(rel, model, image_size=32, mode="nearest")
    assert img.shape == (2, 32, 32) and img[1, 2 * 8 + 3, 3 * 8 + 5] == rel[1, 11]
    assert relevance_map(rel[:, None].expand(2, 3, 16), model).shape == (2, 3, 4, 4)
    with pytest.raises(ValueError, match=r"relevance: expected \(\.\.\., 16\)"):
        relevance_map(rel[:, :15], model)


@pytest.mark.parametrize("family", ["beit", "eva", "rope", "swinv2", "relpos"])
def test_relevance_on_converted_models_of_the_other_families(family: str) -> None:
    """BEiT, EVA / RoPE, Swin V2 and relative-position ViTs: relevance of a converted model, one row per image;
    with identical charts (perturbation 0) every chart's relevance is the fused one."""
    from small_models import randomized, small_family

    torch.manual_seed(0)
    model = mkviz.convert(randomized(small_family(family)), "vanillak", num_charts=3, perturbation=0.0)
    x = torch.randn(2, 3, 32, 32)
    fused = class_relevance(model, x)
    per_chart = class_relevance(model, x, charts=True)
    assert fused.shape[0] == 2 and per_chart.shape == (2, 3, fused.shape[1])
    assert torch.isfinite(fused).all() and fused.sum() > 0
    torch.testing.assert_close(per_chart, fused.unsqueeze(1).expand_as(per_chart), atol=1e-6, rtol=1e-6)
