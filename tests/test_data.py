"""Tests for mkviz.data: procedural shapes, sklearn digits, CIFAR / ImageFolder loading (no downloads)."""
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from mkviz.data import (
    CLASS_NAMES, IMAGENET_MEAN, IMAGENET_STD, MAX_OBJECTS, SPLITS, DigitsDataset, Sample, ShapesDataset,
    build_dataset, collate, make_shapes_splits,
)


pytestmark = pytest.mark.usefixtures("one_thread")  # rendering is many small elementwise ops


@pytest.fixture(scope="module")
def shapes_by_level():
    """300 samples per difficulty at 48 px, pixels in [0, 1]."""
    return {d: ShapesDataset(300, 48, d, seed=3, normalize=False) for d in (0, 1, 2)}


def _red(img):  # img (3, H, W) in [0, 1] -> bool (H, W): saturated red pixels
    return img[0] - torch.maximum(img[1], img[2]) > 0.55


def _blue(img):
    return img[2] - torch.maximum(img[0], img[1]) > 0.40


def _centroid(mask):  # (H, W) bool -> (x, y) in pixels
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return xs.float().mean().item(), ys.float().mean().item()


# ----------------------------------------------------------------------------- shapes: structure
def test_shapes_item_structure_and_dtypes():
    ds = ShapesDataset(20, 40, "medium", seed=1)
    x, y = ds[0]
    assert x.shape == (3, 40, 40) and x.dtype == torch.float32
    assert isinstance(y, int) and 0 <= y < 4
    assert len(ds) == 20 and ds.num_classes == 4 and ds.class_names == CLASS_NAMES
    s = ds.sample(0)
    assert isinstance(s, Sample)
    assert torch.equal(s.image, x) and s.label == y
    assert s.masks.shape == (MAX_OBJECTS, 40, 40) and s.masks.dtype == torch.bool
    assert s.evidence_mask.shape == (40, 40) and s.evidence_mask.dtype == torch.bool
    assert torch.equal(s.evidence_mask, s.masks[0] | s.masks[1])
    # negative indexing and bounds
    assert torch.equal(ds[-1][0], ds[19][0])
    with pytest.raises(IndexError):
        ds[20]


def test_shapes_normalisation_matches_unit_range():
    raw = ShapesDataset(8, 32, 1, seed=2, normalize=False)
    norm = ShapesDataset(8, 32, 1, seed=2)
    x01, xn = raw.batch(range(8)).image, norm.batch(range(8)).image
    assert 0.0 <= x01.min() and x01.max() <= 1.0
    assert x01.max() > 0.8 and x01.min() < 0.3  # objects and background both present
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    torch.testing.assert_close(xn, (x01 - mean) / std)
    # pixels are multiples of 1/255 (uint8 rendering)
    torch.testing.assert_close(x01 * 255, (x01 * 255).round(), rtol=0, atol=1e-4)


def test_shapes_transform_applied_to_image_only():
    ds = ShapesDataset(4, 32, seed=0, transform=lambda im: im * 0 + 7.0, with_masks=True)
    s = ds[1]
    assert torch.all(s.image == 7.0) and s.masks[0].any()


# ----------------------------------------------------------------------------- shapes: determinism
def test_shapes_deterministic_and_render_paths_agree():
    a = ShapesDataset(150, 48, "hard", seed=11)
    b = ShapesDataset(150, 48, "hard", seed=11, precompute=False)
    assert torch.equal(a.images_uint8(), b.images_uint8())  # cached batch render == lazy render
    assert torch.equal(a.labels, b.labels)
    for i in (0, 77, 149):
        assert torch.equal(a[i][0], b[i][0]) and a[i][1] == b[i][1]
        assert torch.equal(a.sample(i).masks, b.sample(i).masks)
        assert torch.equal(b[i][0], b[i][0])  # repeated lazy access is bitwise stable
    batch = b.batch([5, 3, 5])
    assert torch.equal(batch.image[0], batch.image[2]) and torch.equal(batch.image[1], b[3][0])
    # a shorter dataset is a prefix of a longer one (scenes come in seeded blocks)
    c = ShapesDataset(1100, 48, "hard", seed=11)
    assert torch.equal(c.images_uint8(torch.arange(150)), a.images_uint8())


@pytest.mark.parametrize("level, labels, mean, mask_pixels", [
    (0, [0, 0, 0, 2, 3, 2, 2, 2, 1, 3, 0, 0], 125.783, 5350),
    (2, [3, 1, 2, 3, 2, 0, 3, 0, 0, 3, 3, 1], 132.525, 6569),
])
def test_shapes_frozen_content(level, labels, mean, mask_pixels):
    """The generator's output is part of the contract (notebook results depend on it): pin a fingerprint."""
    ds = ShapesDataset(64, 32, level, seed=0)
    assert ds.labels[:12].tolist() == labels
    assert abs(ds.images_uint8().double().mean().item() - mean) < 0.01
    assert int(ds.batch(range(64)).masks.sum()) == mask_pixels


def test_shapes_seed_and_split_change_images():
    base = ShapesDataset(200, 32, 1, seed=0).images_uint8()
    other_seed = ShapesDataset(200, 32, 1, seed=1).images_uint8()
    other_diff = ShapesDataset(200, 32, 2, seed=0).images_uint8()
    assert (base != other_seed).flatten(1).any(1).all()
    assert (base != other_diff).flatten(1).any(1).all()
    train, val, test = make_shapes_splits(500, 500, 500, image_size=32, difficulty=1, seed=0)
    assert (train.split, val.split, test.split) == SPLITS
    keys = [{bytes(im.numpy()) for im in ds.images_uint8()} for ds in (train, val, test)]
    assert all(len(k) == 500 for k in keys)  # no duplicate images within a split
    assert not (keys[0] & keys[1]) and not (keys[0] & keys[2]) and not (keys[1] & keys[2])


def test_shapes_scene_independent_of_resolution():
    small, large = ShapesDataset(30, 32, 0, seed=5), ShapesDataset(30, 128, 0, seed=5)
    assert torch.equal(small.labels, large.labels)
    s, l_ = small.batch(range(30)), large.batch(range(30))
    for i in range(30):
        for k in (0, 1):
            xs, ys = _centroid(s.masks[i, k])
            xl, yl = _centroid(l_.masks[i, k])
            assert abs(xs / 32 - xl / 128) < 0.04 and abs(ys / 32 - yl / 128) < 0.04


# ----------------------------------------------------------------------------- shapes: labels and masks
def test_shapes_labels_balanced():
    ds = ShapesDataset(2000, 32, 2, seed=7)
    counts = torch.bincount(ds.labels, minlength=4)
    assert counts.sum() == 2000 and ds.labels.min() >= 0 and ds.labels.max() <= 3
    assert (counts - 500).abs().max() <= 40, counts  # within 2 % of 1/4
    # the first 1024 scenes form a block with exactly balanced labels
    assert torch.bincount(ds.labels[:1024], minlength=4).tolist() == [256] * 4


@pytest.mark.parametrize("level", [0, 1, 2])
def test_shapes_masks_inside_image_and_disjoint(shapes_by_level, level):
    ds = shapes_by_level[level]
    b = ds.batch(range(len(ds)))
    m = b.masks
    assert m.shape == (300, MAX_OBJECTS, 48, 48)
    assert m[:, 0].flatten(1).any(1).all() and m[:, 1].flatten(1).any(1).all()  # red and blue always drawn
    # objects never touch the border and never overlap
    border = torch.zeros(48, 48, dtype=torch.bool)
    border[0, :] = border[-1, :] = border[:, 0] = border[:, -1] = True
    assert not (m & border).any()
    assert m.sum(1).max() <= 1
    n_obj = m.flatten(2).any(2).sum(1)
    lo, hi = {0: (2, 2), 1: (3, 4), 2: (4, 6)}[level]
    assert n_obj.min() >= lo - (level == 2) and n_obj.max() <= hi  # hard may rarely drop a distractor
    if level:
        assert n_obj.float().mean() > lo + 0.3  # distractors are really there
    # areas: objects of radius 7-15 % of the side, measured in pixels
    areas = m.flatten(2).sum(2)[:, :2].float()
    assert areas.min() >= 8 and areas.max() <= 0.1 * 48 * 48


@pytest.mark.parametrize("level", [0, 1, 2])
def test_shapes_evidence_matches_pixel_colours(shapes_by_level, level):
    ds = shapes_by_level[level]
    b = ds.batch(range(len(ds)))
    for i in range(len(ds)):
        img = b.image[i]
        # red pixels are exactly slot 0, blue exactly slot 1; distractors/background are neither
        assert torch.equal(_red(img), b.masks[i, 0]), i
        assert torch.equal(_blue(img), b.masks[i, 1]), i
        assert torch.equal(b.evidence_mask[i], _red(img) | _blue(img))
        # each object is one flat colour
        for k in range(MAX_OBJECTS):
            if b.masks[i, k].any():
                px = img[:, b.masks[i, k]]
                assert (px.max(1).values - px.min(1).values).max() < 1e-6


@pytest.mark.parametrize("level", [0, 2])
def test_shapes_label_is_relation_of_red_to_blue(shapes_by_level, level):
    ds = shapes_by_level[level]
    b = ds.batch(range(len(ds)))
    for i in range(len(ds)):
        (xr, yr), (xb, yb) = _centroid(b.masks[i, 0]), _centroid(b.masks[i, 1])
        dx, dy = xb - xr, yb - yr  # blue minus red; y points down
        if abs(dx) > abs(dy):
            expected = 0 if dx > 0 else 1  # red left of blue / red right of blue
        else:
            expected = 2 if dy > 0 else 3  # red above blue / red below blue
        assert int(b.label[i]) == expected, (i, dx, dy)
        # unambiguous: the main axis dominates by a clear margin (centroid error aside)
        assert max(abs(dx), abs(dy)) > 1.5 * min(abs(dx), abs(dy))


def test_shapes_dataloader_collate():
    ds = ShapesDataset(40, 32, 1, seed=0, with_masks=True)
    batch = next(iter(DataLoader(ds, batch_size=16, collate_fn=collate)))
    assert isinstance(batch, Sample)
    assert batch.image.shape == (16, 3, 32, 32) and batch.label.shape == (16,) and batch.label.dtype == torch.int64
    assert batch.masks.shape == (16, MAX_OBJECTS, 32, 32) and batch.evidence_mask.shape == (16, 32, 32)
    assert torch.equal(batch.label, ds.labels[:16])
    plain = next(iter(DataLoader(ShapesDataset(40, 32, 1, seed=0), batch_size=16)))
    x, y = plain
    assert torch.equal(x, batch.image) and torch.equal(y, batch.label)


# ----------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize("kwargs, name", [
    (dict(image_size=31), "image_size"), (dict(image_size=225), "image_size"), (dict(image_size=64.0), "image_size"),
    (dict(difficulty=3), "difficulty"), (dict(difficulty="extreme"), "difficulty"),
    (dict(difficulty=True), "difficulty"),
    (dict(split="validation"), "split"), (dict(num_samples=0), "num_samples"), (dict(seed=-1), "seed"),
])
def test_shapes_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        ShapesDataset(**{"num_samples": 4, **kwargs})


def test_shapes_difficulty_aliases():
    assert ShapesDataset(4, 32, "HARD").difficulty == 2 == ShapesDataset(4, 32, 2).difficulty
    assert torch.equal(ShapesDataset(4, 32, "Medium").images_uint8(), ShapesDataset(4, 32, 1).images_uint8())
    assert "32" in str(pytest.raises(ValueError, ShapesDataset, 4, 16).value)  # message gives the range
    assert "224" in str(pytest.raises(ValueError, ShapesDataset, 4, 16).value)


def test_build_dataset_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="name") as e:
        build_dataset("mnist")
    assert "cifar10" in str(e.value) and "imagefolder" in str(e.value)
    with pytest.raises(ValueError, match="split"):
        build_dataset("digits", split="dev")
    with pytest.raises(ValueError, match="with_masks"):
        build_dataset("imagefolder", root=tmp_path, with_masks=True)
    with pytest.raises(ValueError, match="root"):
        build_dataset("imagefolder")


# ----------------------------------------------------------------------------- digits
def test_digits_splits_partition_all_1797():
    parts = {s: DigitsDataset(s, image_size=32, seed=0) for s in SPLITS}
    sizes = {s: len(d) for s, d in parts.items()}
    assert sum(sizes.values()) == 1797
    assert 1240 <= sizes["train"] <= 1280 and 255 <= sizes["val"] <= 285 and 255 <= sizes["test"] <= 285
    idx = [set(d.indices.tolist()) for d in parts.values()]
    assert set.union(*idx) == set(range(1797)) and sum(map(len, idx)) == 1797
    for d in parts.values():  # stratified: every class present in every split
        counts = torch.bincount(d.labels, minlength=10)
        assert counts.min() >= 0.5 * counts.float().mean()
    assert not np.array_equal(DigitsDataset("val", seed=1).indices, parts["val"].indices)
    assert np.array_equal(DigitsDataset("val", seed=0).indices, parts["val"].indices)


def test_digits_values_and_masks():
    from sklearn.datasets import load_digits

    raw = load_digits()
    ds = DigitsDataset("test", image_size=32, normalize=False)
    x, y = ds[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y == int(raw.target[ds.indices[0]])
    assert torch.equal(x[0], x[1]) and torch.equal(x[0], x[2])
    assert 0.0 <= x.min() and x.max() <= 1.0 and x.max() > 0.7
    # upsampling preserves the 8x8 image: block means are close to the original ink level
    blocks = x[0].view(8, 4, 8, 4).mean((1, 3))
    orig = torch.from_numpy(raw.images[ds.indices[0]] / 16.0).float()
    assert (blocks - orig).abs().mean() < 0.08
    s = ds.sample(0)
    assert s.masks.shape == (1, 32, 32) and torch.equal(s.masks[0], s.evidence_mask)
    assert torch.equal(s.evidence_mask, x[0] > ds.threshold)
    frac = ds.batch(range(len(ds))).evidence_mask.float().mean((1, 2))
    assert frac.min() > 0.05 and frac.max() < 0.7
    xn, _ = DigitsDataset("test", image_size=32)[0]
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    torch.testing.assert_close(xn, (x - mean) / std)
    b = ds.batch([0, 1])
    assert torch.equal(b.image[1], ds[1][0])  # batched and single rendering agree bitwise
    with pytest.raises(ValueError, match="image_size"):
        DigitsDataset(image_size=8)


def test_build_dataset_shapes_and_digits():
    s = build_dataset("Shapes", split="val", image_size=32, num_samples=12, difficulty="hard", seed=4)
    assert isinstance(s, ShapesDataset) and len(s) == 12 and s.split == "val" and s.difficulty == 2
    assert torch.equal(s.images_uint8(), ShapesDataset(12, 32, 2, seed=4, split="val").images_uint8())
    d = build_dataset("digits", split="test", image_size=48, with_masks=True)
    assert isinstance(d[0], Sample) and d[0].image.shape == (3, 48, 48) and d.num_classes == 10
    # a timm model fixes the image size (its patch_embed.img_size) and the normalisation statistics
    import timm

    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=40, patch_size=8, depth=1,
                              num_classes=4)
    s = build_dataset("shapes", model=model, num_samples=3)
    assert s.image_size == 40 and s[0][0].shape == (3, 40, 40)
    assert s.mean.flatten().tolist() == [0.5] * 3 and s.std.flatten().tolist() == [0.5] * 3  # timm's cfg, not ImageNet
    raw = ShapesDataset(3, 40, normalize=False).batch(range(3)).image
    torch.testing.assert_close(s.batch(range(3)).image, (raw - 0.5) / 0.5)


# ----------------------------------------------------------------------------- CIFAR / ImageFolder
def test_cifar_missing_without_download(tmp_path):
    for name, folder in (("cifar10", "cifar-10-batches-py"), ("CIFAR100", "cifar-100-python")):
        with pytest.raises(FileNotFoundError) as e:
            build_dataset(name, root=tmp_path, download=False)
        msg = str(e.value)
        assert str(tmp_path / folder) in msg and "download=True" in msg
    assert list(tmp_path.iterdir()) == []  # nothing was created or downloaded
    (tmp_path / "cifar-10-batches-py").mkdir()  # present but incomplete: same error, not torchvision's
    with pytest.raises(FileNotFoundError, match="download=True"):
        build_dataset("cifar10", root=tmp_path, split="test")


def _make_folder(root, classes=("cat", "dog"), per_class=10, size=20):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (size, size + 4, 3), dtype=np.uint8)).save(root / c / f"{i}.png")


def test_imagefolder_flat_split(tmp_path):
    _make_folder(tmp_path)
    parts = {s: build_dataset("imagefolder", root=tmp_path, split=s, image_size=32) for s in SPLITS}
    assert {s: len(d) for s, d in parts.items()} == {"train": 16, "val": 2, "test": 2}
    idx = {s: set(d.indices.tolist()) for s, d in parts.items()}
    assert not (idx["train"] & idx["val"]) and not (idx["train"] & idx["test"]) and not (idx["val"] & idx["test"])
    d = parts["val"]
    assert d.class_names == ("cat", "dog") and d.num_classes == 2
    assert sorted(d.labels.tolist()) == [0, 1]  # stratified
    x, y = d[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y == int(d.labels[0])
    xs, ys = next(iter(DataLoader(parts["train"], batch_size=8)))
    assert xs.shape == (8, 3, 32, 32) and ys.shape == (8,)
    # eval transform is deterministic
    assert torch.equal(d[1][0], d[1][0])


def test_imagefolder_split_folders_and_timm_model(tmp_path):
    import timm

    _make_folder(tmp_path / "train", per_class=3)
    _make_folder(tmp_path / "val", per_class=2)
    tr = build_dataset("imagefolder", root=tmp_path, split="train", image_size=40)
    assert len(tr) == 6 and tr[0][0].shape == (3, 40, 40)
    with pytest.raises(FileNotFoundError, match="test"):
        build_dataset("imagefolder", root=tmp_path, split="test")
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=2, img_size=64)
    va = build_dataset("imagefolder", root=tmp_path, split="val", model=model)
    x, _ = va[0]
    assert len(va) == 4 and x.shape == (3, 64, 64)  # size taken from the model's data config
    assert x.min() >= -1.0 - 1e-6 and x.max() <= 1.0 + 1e-6  # this model normalises with mean = std = 0.5


def test_imagefolder_errors(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="nope"):
        build_dataset("imagefolder", root=missing)
    empty = tmp_path / "empty"
    (empty / "cat").mkdir(parents=True)
    (empty / "cat" / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match="no images"):
        build_dataset("imagefolder", root=empty)
