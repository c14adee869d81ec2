"""Fashion-MNIST in mkviz.data: the IDX reader, the splits, channels and sizes, augmentation, the timm data config.

Tests on the real data skip (saying why) when Debian's `dataset-fashion-mnist` is not installed; the
reader and the error messages are tested on small IDX files written here.
"""
from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from mkviz.data import (
    FASHION_MNIST_CLASSES, FASHION_MNIST_MEAN, FASHION_MNIST_STD, FASHION_MNIST_SYSTEM_DIR, FashionMNISTDataset,
    build_dataset, data_config, load_fashion_mnist,
)

HAVE_DATA = (FASHION_MNIST_SYSTEM_DIR / "t10k-images-idx3-ubyte.gz").is_file()
needs_data = pytest.mark.skipif(not HAVE_DATA, reason="Fashion-MNIST not installed (apt-get install "
                                "dataset-fashion-mnist; `make install` does it as root)")


pytestmark = pytest.mark.usefixtures("one_thread")


def _write_idx(path, array: np.ndarray, gz: bool = True) -> None:
    header = b"\x00\x00\x08" + bytes([array.ndim]) + b"".join(struct.pack(">I", s) for s in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def _fake_root(folder, n_train: int = 40, n_test: int = 20, gz: bool = True):
    """A folder holding tiny Fashion-MNIST-shaped IDX files: image i is filled with the value i."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        images = np.repeat(np.arange(n, dtype=np.uint8)[:, None, None], 28 * 28, axis=1).reshape(n, 28, 28)
        _write_idx(folder / f"{split}-images-idx3-ubyte", images, gz)
        _write_idx(folder / f"{split}-labels-idx1-ubyte", np.arange(n) % 10, gz)
    return folder


def test_idx_reader_gzipped_plain_and_torchvision_layout(tmp_path):
    for root, gz in ((tmp_path / "gz", True), (tmp_path / "plain" / "FashionMNIST" / "raw", False)):
        _fake_root(root, gz=gz)
    for root in (tmp_path / "gz", tmp_path / "plain"):
        images, labels = load_fashion_mnist("test", str(root))
        assert images.shape == (20, 28, 28) and images.dtype == np.uint8
        assert (images[:, 5, 7] == np.arange(20)).all() and (labels == np.arange(20) % 10).all()
    with pytest.raises(ValueError, match="official_split"):
        load_fashion_mnist("val", str(tmp_path / "gz"))


def test_idx_reader_rejects_truncated_and_foreign_files(tmp_path):
    root = _fake_root(tmp_path / "r")
    with gzip.open(root / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(b"\x00\x00\x08\x03" + struct.pack(">III", 20, 28, 28) + b"\x00" * 100)
    with pytest.raises(ValueError, match="truncated"):
        load_fashion_mnist("test", str(root))
    (root / "t10k-images-idx3-ubyte.gz").unlink()
    (root / "t10k-images-idx3-ubyte").write_bytes(b"PK\x03\x04 not an idx file")
    with pytest.raises(ValueError, match="not an IDX file"):
        load_fashion_mnist("test", str(root))


def test_missing_data_is_one_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"apt-get install dataset-fashion-mnist.*--data-root DIR --download"):
        FashionMNISTDataset("test", root=tmp_path)
    with pytest.raises(FileNotFoundError, match="Fashion-MNIST not found in"):
        build_dataset("fashion-mnist", tmp_path / "nowhere", split="train")


def test_splits_on_small_files(tmp_path):
    root = _fake_root(tmp_path / "r", n_train=100, n_test=20)
    train, val, test = (FashionMNISTDataset(s, root=root, normalize=False) for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (90, 10, 20)
    assert sorted(np.concatenate([train.indices, val.indices]).tolist()) == list(range(100))
    assert np.bincount(val.labels.numpy(), minlength=10).tolist() == [1] * 10  # stratified: one per class
    x, y = train[3]
    assert x.shape == (3, 28, 28) and y == int(train.indices[3]) % 10
    torch.testing.assert_close(x, torch.full((3, 28, 28), float(train.indices[3]) / 255.0))
    other = FashionMNISTDataset("val", root=root, seed=1)
    assert not np.array_equal(other.indices, val.indices)


@needs_data
def test_real_splits_sizes_classes_and_statistics():
    train, val, test = (FashionMNISTDataset(s, normalize=False) for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (54_000, 6_000, 10_000)
    assert set(train.indices.tolist()).isdisjoint(val.indices.tolist())
    assert np.bincount(val.labels.numpy()).tolist() == [600] * 10
    assert np.bincount(test.labels.numpy()).tolist() == [1000] * 10
    assert train.class_names == FASHION_MNIST_CLASSES and FASHION_MNIST_CLASSES[9] == "Ankle boot"
    pixels = torch.cat([train._images, val._images]).float() / 255  # all 60,000 training images
    assert pixels.mean().item() == pytest.approx(FASHION_MNIST_MEAN[0], abs=5e-5)
    assert pixels.std().item() == pytest.approx(FASHION_MNIST_STD[0], abs=5e-5)


@needs_data
def test_channels_sizes_masks_and_display_pixels():
    grey = FashionMNISTDataset("test", in_chans=1, num_samples=8)
    rgb = FashionMNISTDataset("test", in_chans=3, num_samples=8)
    assert grey[0][0].shape == (1, 28, 28) and rgb[0][0].shape == (3, 28, 28)
    torch.testing.assert_close(rgb[0][0], grey[0][0].expand(3, -1, -1))
    big = FashionMNISTDataset("test", image_size=56, num_samples=8, normalize=False)
    assert big[0][0].shape == (3, 56, 56) and 0.0 <= big[0][0].min() and big[0][0].max() <= 1.0
    # an antialiased bilinear 2x upsampling keeps the mean brightness
    assert big[0][0].mean().item() == pytest.approx(rgb.images_uint8([0]).float().mean().item() / 255, abs=2e-3)
    s = rgb.batch([0, 1, 2])
    assert s.masks.shape == (3, 1, 28, 28) and s.evidence_mask.dtype == torch.bool
    ink = rgb.images_uint8([0, 1, 2])[:, 0].float() / 255
    assert torch.equal(s.evidence_mask, ink > rgb.threshold)
    with pytest.raises(ValueError, match="in_chans must be 1 or 3"):
        FashionMNISTDataset("test", in_chans=2)
    with pytest.raises(ValueError, match="image_size"):
        FashionMNISTDataset("test", image_size=20)


@needs_data
def test_augmentation_follows_torch_rng_and_keeps_labels():
    ds = FashionMNISTDataset("train", augment=True, num_samples=64, normalize=False)
    plain = FashionMNISTDataset("train", num_samples=64, normalize=False)
    torch.manual_seed(5)
    a = ds.__getitems__(list(range(64)))
    torch.manual_seed(5)
    b = ds.__getitems__(list(range(64)))
    assert all(torch.equal(x[0], y[0]) for x, y in zip(a, b))  # replayable: a resumed run sees the same batch
    assert [y for _, y in a] == [y for _, y in plain.__getitems__(list(range(64)))]
    changed = sum(not torch.equal(x[0], p[0]) for x, p in zip(a, plain.__getitems__(list(range(64)))))
    assert changed > 32  # flips and shifts move most images
    # a shift moves ink, it never creates it: total ink can only drop (pixels pushed past the border)
    for (x, _), (p, _) in zip(a, plain.__getitems__(list(range(64)))):
        assert x.sum().item() <= p.sum().item() + 1e-3


def test_data_config_for_each_kind_of_dataset():
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=28, patch_size=4, embed_dim=32,
                              depth=1, num_heads=2, num_classes=10)
    own = timm.data.resolve_model_data_config(model)
    fm = data_config("fashion-mnist", 28, own)
    assert fm == {"input_size": (3, 28, 28), "mean": FASHION_MNIST_MEAN * 3, "std": FASHION_MNIST_STD * 3,
                  "interpolation": "bilinear", "crop_pct": 1.0, "crop_mode": "center"}
    shapes = data_config("shapes", 32, own)
    assert shapes["mean"] == tuple(own["mean"]) and shapes["crop_pct"] == 1.0 and shapes["input_size"] == (3, 32, 32)
    cifar = data_config("cifar10", 32, own)
    assert cifar["crop_pct"] == own["crop_pct"] and cifar["interpolation"] == own["interpolation"]
    with pytest.raises(ValueError, match="name must be one of"):
        data_config("mnist", 28, own)


@needs_data
def test_timm_transform_reproduces_the_dataset_exactly():
    ds = FashionMNISTDataset("test", num_samples=16)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=28, patch_size=4, embed_dim=32,
                              depth=1, num_heads=2, num_classes=10)
    model.pretrained_cfg = {**model.pretrained_cfg, **data_config("fashion-mnist", 28,
                                                                   timm.data.resolve_model_data_config(model))}
    transform = timm.data.create_transform(**timm.data.resolve_model_data_config(model))
    raw = ds.images_uint8()[:, 0].numpy()
    via_timm = torch.stack([transform(Image.fromarray(im).convert("RGB")) for im in raw])
    torch.testing.assert_close(via_timm, torch.stack([ds[i][0] for i in range(16)]), rtol=0, atol=1e-6)
    # build_dataset takes the model's statistics and channel count
    assert torch.equal(build_dataset("fashion-mnist", split="test", model=model, num_samples=16)[3][0], ds[3][0])
