"""The checkpoints in data/checkpoints: small, complete, and their timm data config reproduces their preprocessing.

The Fashion-MNIST ones are evaluated on the official 10,000 test images through timm's own transform
(`timm.data.resolve_model_data_config` + `timm.data.create_transform`, PIL images in) and must give the
accuracy their config claims.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from mkviz.training.checkpoint import shipped_checkpoints_dir
from mkviz.data import FASHION_MNIST_SYSTEM_DIR, ShapesDataset, load_fashion_mnist
from mkviz.apps.shipped import NAMES, SHIPPED_NAMES, checkpoint_dir, train_args
from mkviz.training.build import load_checkpoint
from mkviz.training.command import config_from_args
from mkviz.training.loop import train
from mkviz.training.config import TrainConfig

HAVE_DATA = (FASHION_MNIST_SYSTEM_DIR / "t10k-images-idx3-ubyte.gz").is_file()
FASHION = [n for n in NAMES if (shipped_checkpoints_dir() / "fashion-mnist" / n / "model.safetensors").is_file()]


pytestmark = pytest.mark.usefixtures("one_thread")


def test_every_checkpoint_is_shipped_small_and_complete():
    for dataset, names in SHIPPED_NAMES.items():
        assert sorted(p.name for p in (checkpoint_dir(dataset, names[0]).parent).iterdir()) == sorted(names)
        for name in names:
            d = checkpoint_dir(dataset, name)
            assert (d / "model.safetensors").is_file(), f"missing {d}: run `make checkpoints DATASET={dataset}`"
            assert (d / "model.safetensors").stat().st_size < 5 * 2 ** 20
            assert sorted(p.name for p in d.iterdir()) == ["config.json", "model.safetensors"]


def test_recipes_parse_and_name_their_variant():
    for name in NAMES:
        cfg = config_from_args(train_args("fashion-mnist", name)).resolved()
        assert cfg.dataset == "fashion-mnist" and not cfg.augment and cfg.epochs == 10
        assert cfg.lr == (1e-3 if name == "simplek-8" else 3e-3)  # SimpleK at the check's best rate
        assert cfg.variant == name.split("-")[0]
        assert cfg.timm_kwargs == {"img_size": 28, "patch_size": 4, "embed_dim": 64, "depth": 4, "num_heads": 4}
        if "-" in name:
            assert cfg.num_charts == int(name.split("-")[1])
    assert config_from_args(train_args("fashion-mnist", "kua-8")).ua_weight == 0.1
    shipped = json.loads((checkpoint_dir("fashion-mnist", "simplek-8") / "config.json").read_text())
    assert shipped["train"]["lr"] == 1e-3  # the shipped checkpoint is the one the recipe makes
    with pytest.raises(ValueError, match="checkpoint name must be one of"):
        train_args("fashion-mnist", "kua-3")
    with pytest.raises(ValueError, match="checkpoint name must be one of"):
        train_args("shapes", "vanillak-16")  # shapes ships the five main models only


@pytest.fixture(scope="module")
def fashion_test_images():
    """The official test set through timm's transform of the (shared) Fashion-MNIST data config."""
    if not HAVE_DATA:
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    if not FASHION:
        pytest.skip("no Fashion-MNIST checkpoints in data/checkpoints/fashion-mnist (make checkpoints)")
    model, _ = load_checkpoint(checkpoint_dir("fashion-mnist", FASHION[0]))
    transform = timm.data.create_transform(**timm.data.resolve_model_data_config(model))
    images, labels = load_fashion_mnist("test")
    x = torch.stack([transform(Image.fromarray(im).convert("RGB")) for im in images])  # (10000, 3, 28, 28)
    return x, torch.from_numpy(labels)


@pytest.mark.slow
@pytest.mark.parametrize("name", FASHION)
def test_fashion_checkpoint_gives_its_claimed_accuracy_through_timms_transform(name, fashion_test_images):
    model, config = load_checkpoint(checkpoint_dir("fashion-mnist", name))
    cfg = timm.data.resolve_model_data_config(model)
    assert cfg["input_size"] == (3, 28, 28) and cfg["crop_pct"] == 1.0 and cfg["mean"] == (0.286,) * 3
    x, y = fashion_test_images
    with torch.no_grad():
        predictions = torch.cat([model(chunk).argmax(-1) for chunk in x.split(1000)])
    accuracy = (predictions == y).double().mean().item()
    claimed = config["metrics"]["test"]["acc"]
    assert accuracy == pytest.approx(claimed, abs=0.005), (accuracy, claimed)
    assert accuracy > 0.8  # chance is 0.1; data/README.md has each one


@pytest.mark.parametrize("name", ["baseline", "vanillak-8"])
def test_shapes_checkpoint_data_config_reproduces_its_inputs(name):
    """Shipped before data configs were recorded: load_checkpoint derives it (32 px, the model's mean/std,
    no crop), and timm's transform of the rendered pixels gives exactly the training inputs."""
    model, config = load_checkpoint(checkpoint_dir("shapes", name))
    cfg = timm.data.resolve_model_data_config(model)
    assert cfg["input_size"] == (3, 32, 32) and cfg["crop_pct"] == 1.0
    ds = ShapesDataset(8, 32, "easy", seed=0, split="test", mean=cfg["mean"], std=cfg["std"])
    transform = timm.data.create_transform(**cfg)
    via_timm = torch.stack([transform(Image.fromarray(im.permute(1, 2, 0).numpy())) for im in ds.images_uint8()])
    torch.testing.assert_close(via_timm, torch.stack([ds[i][0] for i in range(8)]), rtol=0, atol=1e-6)


@pytest.mark.slow
def test_a_digits_run_records_its_data_config(tmp_path):
    train(TrainConfig(preset="micro", dataset="digits", epochs=1, batch_size=64, out=str(tmp_path / "r"), quiet=True))
    model, config = load_checkpoint(tmp_path / "r" / "final")
    cfg = timm.data.resolve_model_data_config(model)
    assert config["model_spec"]["data_config"]["input_size"] == [3, 32, 32]
    assert cfg["input_size"] == (3, 32, 32) and cfg["crop_pct"] == 1.0 and cfg["interpolation"] == "bilinear"
    assert np.allclose(cfg["mean"], timm.create_model("vit_tiny_patch16_224").pretrained_cfg["mean"])
