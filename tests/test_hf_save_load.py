"""Hugging Face `save_pretrained` -> `from_pretrained` of converted models, every family and variant (KUA
included): the Auto classes give the registered manifold class with the same outputs; a plain class is told
in one line what to do; `fold` gives the plain class back."""
from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="transformers is not installed (pip install mkviz[hf])")

import mkviz  # noqa: E402
from mkviz.core.hf import manifold_keys  # noqa: E402

from test_hf import FAMILIES, output, small_hf  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def auto_class(family: str) -> type:
    return transformers.AutoModel if family == "dinov2" else transformers.AutoModelForImageClassification


@pytest.mark.parametrize("variant", mkviz.VARIANTS)
@pytest.mark.parametrize("family", FAMILIES)
def test_save_load_round_trip(family, variant, tmp_path):
    options = dict(ua_weight=0.1) if variant == "kua" else dict(kernel_size=3) if variant == "spatialk" else {}
    model = mkviz.convert(small_hf(family), variant, 3, **options)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = output(model(pixel_values=x))
    model.save_pretrained(tmp_path)
    loaded = auto_class(family).from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert type(loaded).__name__ == "Mkviz" + type(small_hf(family)).__name__ == type(model).__name__
    assert loaded.config.manifold_key["variant"] == variant and loaded.config.model_type == "mkviz_" + family
    keys = [m.k_proj for _, m in manifold_keys(loaded)]
    assert keys and all(k.variant == variant and k.num_charts == 3 for k in keys)
    with torch.no_grad():
        diff = (output(loaded(pixel_values=x)) - y).abs().max().item()
    assert diff <= 1e-6, f"{family} {variant}: max |diff| {diff:.2e}"


def test_plain_class_is_told_what_to_do(tmp_path, caplog):
    model = mkviz.convert(small_hf("vit"), "kua", 3)
    model.save_pretrained(tmp_path)
    transformers.ViTForImageClassification.from_pretrained(tmp_path)
    err = "\n".join(r.getMessage() for r in caplog.records)
    assert "this folder holds a manifold-key model (mkviz_vit): a plain vit class drops its key" in err
    assert "AutoModelForImageClassification" in err


def test_fold_gives_the_plain_class_back(tmp_path):
    plain = small_hf("swin")
    folded = mkviz.fold(mkviz.convert(plain, "vanillak", 3))
    assert type(folded) is type(plain) and type(folded.config) is type(plain.config)
    assert not hasattr(folded.config, "manifold_key")
    folded.save_pretrained(tmp_path)
    loaded = transformers.AutoModelForImageClassification.from_pretrained(tmp_path, attn_implementation="eager")
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert type(loaded) is type(plain)
        assert (loaded.eval()(pixel_values=x).logits - plain(pixel_values=x).logits).abs().max().item() <= 1e-5
