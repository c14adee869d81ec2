"""Shared fixtures: small timm models with random weights (nothing is downloaded)."""
from __future__ import annotations

import timm
import torch
import pytest

torch.set_num_threads(max(1, torch.get_num_threads()))


def small_vit(**kwargs) -> torch.nn.Module:
    """A 2-block ViT on 32-px images (4x4 patches of 8 px + cls): fast enough for training tests."""
    cfg = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, num_classes=5)
    cfg.update(kwargs)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, **cfg)


def small_swin(**kwargs) -> torch.nn.Module:
    """A 2-stage Swin on 32-px images, window 4 (shifted windows in the second block of each stage)."""
    cfg = dict(img_size=32, patch_size=2, window_size=4, embed_dim=32, depths=(2, 2), num_heads=(2, 4),
               num_classes=5)
    cfg.update(kwargs)
    return timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, **cfg)


@pytest.fixture
def seeded():
    torch.manual_seed(0)
    yield
