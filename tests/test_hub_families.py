"""timm's Hub format for every family mkviz converts: a manifold-key model of each family and variant, saved as
a timm Hub folder, loads back through `timm.create_model("local-dir:...")` with the same outputs; a folded one
loads as the plain timm architecture."""
from __future__ import annotations

import timm
import torch
import pytest

import mkviz
from mkviz.core.timm_build import spec_from_kwargs
from mkviz.training.timm_hub import save_hub

from small_models import SMALL, randomized

ARCHS = {
    "vit": ("vit_tiny_patch16_224", dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4)),
    "swin": ("swin_tiny_patch4_window7_224", dict(img_size=32, patch_size=2, window_size=4, embed_dim=32,
                                                  depths=(2, 2), num_heads=(2, 4))),
    **{family: SMALL[family] for family in ("beit", "eva", "rope", "swinv2", "relpos")},
}
CASES = [(family, variant) for family in ARCHS for variant in mkviz.VARIANTS]  # 28 cases, about 6 s


def _built(family: str, variant: str) -> tuple[torch.nn.Module, dict]:
    arch, cfg = ARCHS[family]
    kwargs = dict(cfg, num_classes=5, variant=variant, num_charts=3)
    torch.manual_seed(0)
    model = timm.create_model(f"mkviz_{arch}", pretrained=False, **kwargs)
    return randomized(model.eval()), spec_from_kwargs(arch, kwargs)


@pytest.mark.parametrize("family, variant", CASES)
def test_manifold_model_round_trips_through_a_timm_hub_folder(tmp_path, family, variant):
    model, spec = _built(family, variant)
    size = ARCHS[family][1]["img_size"]
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    save_hub(model, tmp_path / "hub", spec)
    loaded = timm.create_model(f"local-dir:{tmp_path / 'hub'}", pretrained=True).eval()
    assert loaded.pretrained_cfg["architecture"] == f"mkviz_{ARCHS[family][0]}"
    with torch.no_grad():
        assert (loaded(x) - model(x)).abs().max().item() <= 1e-6
    if variant in mkviz.core.key.LINEAR_VARIANTS:  # folded: the plain timm architecture, same outputs
        folded = mkviz.fold(model)
        save_hub(folded, tmp_path / "folded", spec)
        plain = timm.create_model(f"local-dir:{tmp_path / 'folded'}", pretrained=True).eval()
        assert plain.pretrained_cfg["architecture"] == ARCHS[family][0]
        assert not list(mkviz.manifold_modules(plain))
        with torch.no_grad():
            assert (plain(x) - model(x)).abs().max().item() <= 1e-5
