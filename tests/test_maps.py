"""Tests for mkviz.maps: ViT rows -> image, token indexing, Swin window scatter (checked against timm)."""
from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.models.swin_transformer import SwinTransformer, window_partition

from mkviz.explain.maps import (
    patch_grid,
    query_index,
    query_position,
    swin_block_geometry,
    swin_token_window,
    swin_window_attention_to_image,
    upsample_map,
    vit_attention_to_image,
)


# --------------------------------------------------------------------------- ViT
def test_query_index_round_trip():
    for grid, prefix in [((4, 4), 1), ((3, 5), 0), ((2, 7), 5)]:
        seen = set()
        for r in range(grid[0]):
            for c in range(grid[1]):
                i = query_index(r, c, grid, prefix)
                assert query_position(i, grid, prefix) == (r, c)
                seen.add(i)
        assert seen == set(range(prefix, prefix + grid[0] * grid[1]))
    assert query_index(1, 2, (3, 5), 1) == 1 + 1 * 5 + 2
    with pytest.raises(ValueError, match="prefix"):
        query_position(0, (4, 4), 1)
    with pytest.raises(ValueError, match="row, col"):
        query_index(4, 0, (4, 4), 1)
    with pytest.raises(ValueError, match="index"):
        query_position(17, (4, 4), 1)


def test_vit_row_lands_on_patch_nearest():
    grid, prefix = (4, 4), 1
    row = torch.zeros(prefix + 16)
    row[0] = 0.3  # cls mass is dropped
    row[query_index(1, 2, grid, prefix)] = 0.7
    img = vit_attention_to_image(row, grid, prefix, image_size=64, mode="nearest")
    assert img.shape == (64, 64)
    expected = torch.zeros(64, 64)
    expected[16:32, 32:48] = 0.7
    torch.testing.assert_close(img, expected)


def test_vit_row_lands_on_patch_bilinear():
    grid, prefix = (4, 4), 1
    row = torch.zeros(prefix + 16)
    row[query_index(2, 1, grid, prefix)] = 1.0
    img = vit_attention_to_image(row, grid, prefix, image_size=(64, 64))
    # peak is around the patch centre (pixel rows 32..47, cols 16..31), support stays near it
    ys, xs = torch.nonzero(img == img.max(), as_tuple=True)
    assert ys.min() >= 32 and ys.max() <= 47 and xs.min() >= 16 and xs.max() <= 31
    assert img[40, 24].item() == pytest.approx(img.max().item())
    assert img[:16].abs().max() == 0 and img[:, 48:].abs().max() == 0


def test_vit_nonsquare_grid_and_batch():
    grid = (2, 3)  # gh=2 rows, gw=3 cols
    rows = torch.zeros(2, 1 + 6)
    rows[0, query_index(1, 0, grid, 1)] = 1.0
    rows[1, query_index(0, 2, grid, 1)] = 1.0
    img = vit_attention_to_image(rows, grid, 1, image_size=(32, 48), mode="nearest")
    assert img.shape == (2, 32, 48)
    assert img[0, 16:32, 0:16].min() == 1 and img[0].sum() == 16 * 16
    assert img[1, 0:16, 32:48].min() == 1 and img[1].sum() == 16 * 16
    g = vit_attention_to_image(rows, grid, 1)  # no image_size: patch grid
    assert g.shape == (2, 2, 3) and g[0, 1, 0] == 1 and g[1, 0, 2] == 1
    with pytest.raises(ValueError, match="attn_row"):
        vit_attention_to_image(rows, (3, 3), 1)
    with pytest.raises(ValueError, match="mode"):
        vit_attention_to_image(rows, grid, 1, image_size=32, mode="area")


def test_upsample_map_nearest_blocks():
    m = torch.arange(6.0).view(2, 3)
    up = upsample_map(m, (4, 6), mode="nearest")
    torch.testing.assert_close(up, m.repeat_interleave(2, 0).repeat_interleave(2, 1))


def test_patch_grid_from_timm_vit_dynamic():
    model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=32,
        depth=1, num_heads=2, num_classes=0, dynamic_img_size=True, reg_tokens=2,
    ).eval()
    pg = patch_grid(model)
    assert pg.grid_size == (4, 4) and pg.num_prefix_tokens == 3 and pg.patch_size == (8, 8)
    pg2 = patch_grid(model, (32, 48))
    assert pg2.grid_size == (4, 6) and pg2.num_tokens == 3 + 24
    assert patch_grid(model.patch_embed, (32, 48)).grid_size == (4, 6)
    # the real token count of a non-square forward pass matches
    captured = {}
    model.blocks[0].attn.fused_attn = False
    h = model.blocks[0].attn.attn_drop.register_forward_hook(lambda m, i, o: captured.setdefault("a", o))
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 48))
    h.remove()
    attn = captured["a"]
    assert attn.shape[-1] == pg2.num_tokens
    img = vit_attention_to_image(attn[0, 0, 0], pg2.grid_size, pg2.num_prefix_tokens, image_size=(32, 48))
    assert img.shape == (32, 48)


# --------------------------------------------------------------------------- Swin helpers
def test_swin_token_window_arithmetic():
    # 14x14 grid, window 7, shift 3: token (5, 6) -> rolled (2, 3) -> window 0, local 2*7+3
    assert swin_token_window((5, 6), 14, 7, 3) == (0, 17)
    # token (12, 1) -> rolled (9, 12) -> window (1, 1) = 3, local 2*7+5
    assert swin_token_window((12, 1), 14, 7, 3) == (3, 19)
    # batch index offsets by nW = 4
    assert swin_token_window((12, 1), 14, 7, 3, batch_index=2) == (11, 19)
    # non-square with padding: H=10, W=14, window 4 -> nWh=3, nWw=4; token (0, 5), shift 2 -> rolled (8, 3)
    assert swin_token_window((0, 5), (10, 14), 4, 2) == (2 * 4 + 0, 0 * 4 + 3)


def test_swin_synthetic_no_shift():
    # one image, 4x4 grid, window 2 -> 4 windows; fill the window attention with uniform rows
    attn = torch.full((4, 1, 4, 4), 0.25)
    m = swin_window_attention_to_image(attn, (2, 3), (4, 4), 2, 0)
    expected = torch.zeros(4, 4)
    expected[2:4, 2:4] = 0.25
    torch.testing.assert_close(m, expected)
    # query_pixel in a 16x16 image: pixel (9, 13) -> token (2, 3)
    m2 = swin_window_attention_to_image(attn, None, (4, 4), 2, 0, query_pixel=(9, 13), image_size=16)
    assert m2.shape == (16, 16)
    torch.testing.assert_close(m2, upsample_map(expected, 16, "nearest"))
    with pytest.raises(ValueError, match="windows"):
        swin_window_attention_to_image(attn[:3], (0, 0), (4, 4), 2, 0)
    with pytest.raises(ValueError, match="Nw"):
        swin_window_attention_to_image(attn, (0, 0), (4, 4), 3, 0)


# --------------------------------------------------------------------------- Swin vs timm
def _tiny_swin(img_size, window_size):
    torch.manual_seed(0)
    model = SwinTransformer(
        img_size=img_size, patch_size=4, window_size=window_size, embed_dim=16,
        depths=(2,), num_heads=(2,), num_classes=0,
    ).eval()
    return model


def _record(model, x):
    """Run the model, recording each block's softmax output (B*nW, heads, Nw, Nw) and input (B, H, W, C)."""
    attns, inputs, hooks = [], [], []
    for blk in model.layers[0].blocks:
        blk.attn.fused_attn = False
        hooks.append(blk.attn.softmax.register_forward_hook(lambda m, i, o: attns.append(o.detach())))
        hooks.append(blk.register_forward_pre_hook(lambda m, a: inputs.append(a[0].detach())))
    with torch.no_grad():
        model.forward_features(x)
    for h in hooks:
        h.remove()
    return attns, inputs


def _reference_map(attn, query, H, W, ws, s, b, head):
    """Independent path: roll + pad a token-index grid and run timm's own window_partition on it."""
    idx = torch.arange(H * W, dtype=torch.float64).view(1, H, W, 1)
    if s:
        idx = torch.roll(idx, shifts=(-s, -s), dims=(1, 2))
    pad_h, pad_w = (ws - H % ws) % ws, (ws - W % ws) % ws
    idx = F.pad(idx, (0, 0, 0, pad_w, 0, pad_h), value=-1.0)
    wins = window_partition(idx, (ws, ws)).reshape(-1, ws * ws).long()  # (nW, Nw) original index or -1
    qi = query[0] * W + query[1]
    w, loc = [int(v) for v in (wins == qi).nonzero()[0]]
    row = attn[b * wins.shape[0] + w, head, loc]
    valid = wins[w] >= 0
    ref = torch.zeros(H * W, dtype=attn.dtype)
    ref[wins[w][valid]] = row[valid]
    return ref.view(H, W), set(wins[w][valid].tolist()), row[~valid].sum().item()


def test_swin_geometry_from_block():
    model = _tiny_swin((56, 56), 7)
    g0 = swin_block_geometry(model.layers[0].blocks[0])
    g1 = swin_block_geometry(model.layers[0].blocks[1])
    assert g0 == dict(resolution=(14, 14), window_size=(7, 7), shift_size=(0, 0))
    assert g1 == dict(resolution=(14, 14), window_size=(7, 7), shift_size=(3, 3))


def test_swin_shifted_block_matches_timm():
    model = _tiny_swin((56, 56), 7)
    x = torch.randn(2, 3, 56, 56)
    attns, _ = _record(model, x)
    assert attns[1].shape == (2 * 4, 2, 49, 49)
    H = W = 14
    ws, s = 7, 3
    geo = swin_block_geometry(model.layers[0].blocks[1])
    # (5, 6): interior of the shifted window (original rows/cols 3..9) -> no region masking
    # (12, 1): corner window that wraps around -> 4 masked regions
    for query in [(5, 6), (12, 1), (0, 13), (9, 9)]:
        for b in (0, 1):
            for head in (0, 1):
                m = swin_window_attention_to_image(attns[1], query, batch_index=b, head=head, **geo)
                ref, window_set, pad_mass = _reference_map(attns[1], query, H, W, ws, s, b, head)
                assert pad_mass == 0.0
                torch.testing.assert_close(m, ref, rtol=0, atol=0)
                support = set(torch.nonzero(m.flatten() != 0).flatten().tolist())
                assert support <= window_set and len(window_set) == ws * ws
                assert m.sum().item() == pytest.approx(1.0, abs=1e-5)
                # tokens that really receive attention: same window AND same side of the wrap
                strong = set(torch.nonzero(m.flatten() > 1e-30).flatten().tolist())
                side = lambda i: (i // W < s, i % W < s)  # noqa: E731  rows/cols < s wrapped around
                q_side = side(query[0] * W + query[1])
                assert strong == {i for i in window_set if side(i) == q_side}
    # interior query: support is the whole shifted window, exactly
    m = swin_window_attention_to_image(attns[1], (5, 6), batch_index=1, **geo)  # head average
    support = set(torch.nonzero(m.flatten()).flatten().tolist())
    assert support == {r * W + c for r in range(3, 10) for c in range(3, 10)}
    assert m.sum().item() == pytest.approx(1.0, abs=1e-5)


def test_swin_support_matches_gradient_of_block():
    """Model-level check independent of any layout code: the block's attention output at a query
    token depends only on the tokens of its (shifted) window."""
    model = _tiny_swin((56, 56), 7)
    attns, inputs = _record(model, torch.randn(1, 3, 56, 56))
    blk = model.layers[0].blocks[1]
    xin = inputs[1].clone().requires_grad_(True)  # (1, 14, 14, C)
    out = blk._attn(blk.norm1(xin))
    q = (5, 6)
    out[0, q[0], q[1]].sum().backward()
    grad_support = xin.grad[0].abs().sum(-1) > 0
    m = swin_window_attention_to_image(attns[1], q, **swin_block_geometry(blk))
    assert torch.equal(grad_support, m > 0)


def test_swin_unshifted_block_and_padding_nonsquare():
    model = _tiny_swin((40, 56), 4)  # stage grid 10 x 14, window 4 -> padded to 12 x 16, shift 2
    attns, _ = _record(model, torch.randn(2, 3, 40, 56))
    H, W, ws = 10, 14, 4
    assert attns[0].shape == (2 * 3 * 4, 2, 16, 16)
    for blk_i, s in [(0, 0), (1, 2)]:
        geo = swin_block_geometry(model.layers[0].blocks[blk_i])
        assert geo == dict(resolution=(H, W), window_size=(ws, ws), shift_size=(s, s))
        for query in [(0, 5), (9, 13), (4, 7), (1, 0)]:
            m = swin_window_attention_to_image(attns[blk_i], query, batch_index=1, head=1, **geo)
            ref, window_set, pad_mass = _reference_map(attns[blk_i], query, H, W, ws, s, 1, 1)
            assert m.shape == (H, W)
            torch.testing.assert_close(m, ref, rtol=0, atol=0)
            assert set(torch.nonzero(m.flatten()).flatten().tolist()) <= window_set
            # mass on padding tokens is dropped by the crop; everything else is kept
            assert m.sum().item() == pytest.approx(1.0 - pad_mass, abs=1e-5)
    # unshifted block: (9, 13) sits in the bottom-right window, 2 padding rows + 2 padding cols, which
    # are attended to (no mask in W-MSA) -> that mass is lost with the crop.  (In the shifted block
    # timm's region mask, built on the padded grid, happens to cut the padding off for this size.)
    m = swin_window_attention_to_image(attns[0], (9, 13), batch_index=1, head=1,
                                       **swin_block_geometry(model.layers[0].blocks[0]))
    assert set(torch.nonzero(m.flatten()).flatten().tolist()) == {r * W + c for r in (8, 9) for c in (12, 13)}
    assert m.sum().item() < 1.0 - 1e-4
    # unshifted window 0: plain block, rows 0..3, cols 0..3
    m0 = swin_window_attention_to_image(attns[0], (1, 2), (H, W), ws, 0)
    assert set(torch.nonzero(m0.flatten()).flatten().tolist()) == {r * W + c for r in range(4) for c in range(4)}
    up = swin_window_attention_to_image(attns[0], (1, 2), (H, W), ws, 0, image_size=(40, 56))
    torch.testing.assert_close(up, upsample_map(m0, (40, 56), "nearest"))
