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


def assert_fast_matches_reference(key: torch.nn.Module, x: torch.Tensor) -> None:
    """A ManifoldKey's fast and reference paths give the same output and the same gradients for x and for
    every parameter (float64; a generic linear functional of the output is backpropagated)."""
    results = {}
    for impl in ("reference", "fast"):
        key.impl = impl
        key.zero_grad()
        x.grad = None
        out = key(x)
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        results[impl] = (out.detach(), x.grad.clone(), [p.grad.clone() for p in key.parameters()])
    ref, fast = results["reference"], results["fast"]
    torch.testing.assert_close(fast[0], ref[0], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(fast[1], ref[1], rtol=1e-10, atol=1e-10)
    for g_fast, g_ref in zip(fast[2], ref[2]):
        torch.testing.assert_close(g_fast, g_ref, rtol=1e-9, atol=1e-10)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a test module: small models and many small ops run fastest that way, and the
    numbers are reproducible. With the CPU oversubscribed (other jobs on a 2-core machine) torch's OpenMP
    threads spin at barriers: the data tests went from ~3 s to ~60 s with two threads. Use it with
    `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def seeded():
    torch.manual_seed(0)
    yield


# ----------------------------------------------------------------------------- browser
def screenshots_dir() -> "Path":
    """Where browser tests leave their screenshots for a person to look at: $MKVIZ_SCREENSHOTS, else
    <temp>/mkviz-screenshots (never inside the repository)."""
    import os
    import tempfile
    from pathlib import Path

    folder = Path(os.environ.get("MKVIZ_SCREENSHOTS") or Path(tempfile.gettempdir()) / "mkviz-screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-quic", "--no-first-run", "--disable-sync"]


def chromium_path() -> str | None:
    import shutil
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="session")
def browser():
    """Headless Debian chromium driven by Playwright (`make test` installs chromium when it can)."""
    path = chromium_path()
    if path is None:
        pytest.skip("browser test skipped: no chromium on this machine (make test installs Debian's "
                    "chromium with apt-get when run as root)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("browser test skipped: playwright is not installed (pip install -e '.[test]')")
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()
