"""Fashion-MNIST scenes (mkviz.data.scenes): every target is checked against what the generator says it did (the
articles' sources and placements), re-rendered here from the official images."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from mkviz.data import (DATASET_NAMES, FASHION_MNIST_SYSTEM_DIR, FashionMNISTDataset, FashionScenesDataset,
                        SCENE_CLASSES, build_dataset, collate_scenes, load_fashion_mnist)

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(not (FASHION_MNIST_SYSTEM_DIR / "t10k-images-idx3-ubyte.gz").is_file(),
                                 reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")]

N = 40  # scenes checked per split


@pytest.fixture(scope="module")
def sets() -> dict[str, FashionScenesDataset]:
    return {s: FashionScenesDataset(s, num_samples=N, seed=3) for s in ("train", "val", "test")}


def _rerender(ds: FashionScenesDataset, index: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Each article's resized pixels and whole silhouette on the canvas, from its source and placement."""
    images, _ = load_fashion_mnist(ds.official_split)
    s = ds.scene(index)
    pixels, wholes = [], []
    for source, (y, x, side) in zip(s.sources.tolist(), s.placements.tolist()):
        a = torch.tensor(images[source], dtype=torch.float32)[None, None] / 255.0
        a = F.interpolate(a, size=(side, side), mode="bilinear", antialias=True)[0, 0]
        a = (a.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        canvas = np.zeros((ds.image_size,) * 2, np.uint8)
        canvas[y:y + side, x:x + side] = a
        pixels.append(canvas)
        wholes.append(canvas > round(ds.threshold * 255))
    return pixels, wholes


def test_items_have_the_documented_shapes_and_counts(sets):
    for ds in sets.values():
        counts = []
        for i in range(N):
            image, t = ds[i]
            n = len(t["labels"])
            counts.append(n)
            assert image.shape == (3, 64, 64) and image.dtype == torch.float32
            assert t["boxes"].shape == (n, 4) and t["boxes"].dtype == torch.float32
            assert t["labels"].dtype == torch.int64 and 1 <= int(t["labels"].min()) and int(t["labels"].max()) <= 10
            assert t["masks"].shape == (n, 64, 64) and t["masks"].dtype == torch.uint8
            assert t["semantic"].shape == (64, 64) and t["semantic"].dtype == torch.int64 and t["image_id"] == i
        assert set(counts) == {2, 3, 4}, counts


def test_targets_match_the_rerendered_articles(sets):
    for ds in sets.values():
        for i in range(N):
            s = ds.scene(i)
            pixels, wholes = _rerender(ds, i)
            top = np.zeros((64, 64), np.int64)  # the top-most article per pixel, re-derived: later ones win
            for k, whole in enumerate(wholes):
                top[whole] = k + 1
            for k in range(len(wholes)):
                visible = top == k + 1
                assert np.array_equal(s.masks[k].numpy(), visible)  # earlier masks lose the occluded pixels
                assert np.array_equal(s.pixels.numpy()[visible], pixels[k][visible])  # the source's own pixels
                rows, cols = np.nonzero(visible)
                assert s.boxes[k].tolist() == [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]  # tight
                rows, cols = np.nonzero(wholes[k])
                assert s.full_boxes[k].tolist() == [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]
                assert visible.sum() >= ds.min_visible * wholes[k].sum()
            labels = np.concatenate([[0], s.labels.numpy()])
            assert np.array_equal(s.semantic.numpy(), labels[top])  # the top-most article's label, 0 elsewhere
            assert np.array_equal(s.semantic.numpy() > 0, s.pixels.numpy() > round(ds.threshold * 255))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
    return w * h / (area(a) + area(b) - w * h)


def test_no_article_overlaps_an_earlier_one_beyond_the_limit(sets):
    worst = 0.0
    for ds in sets.values():
        for i in range(N):
            b = ds.scene(i).full_boxes.numpy()
            worst = max([worst] + [_iou(b[j], b[k]) for k in range(len(b)) for j in range(k)])
    assert 0.05 < worst <= 0.2  # the limit binds, and holds


def test_scenes_are_deterministic_per_seed_and_index():
    a, b = FashionScenesDataset("train", num_samples=30, seed=3), FashionScenesDataset("train", num_samples=30, seed=3)
    c = FashionScenesDataset("train", num_samples=30, seed=4)
    order = [17, 2, 29, 2, 0]  # random access gives the same scene as any other order
    for i in order:
        sa, sb = a.scene(i), b.scene(i)
        assert all(x.numpy().tobytes() == y.numpy().tobytes() for x, y in zip(sa, sb))
    same = sum(a.scene(i).pixels.equal(c.scene(i).pixels) for i in range(30))
    assert same == 0
    assert not a.scene(0).pixels.equal(a.scene(1).pixels)


def test_train_scenes_use_training_images_and_test_scenes_test_images(sets):
    fm = {s: set(FashionMNISTDataset(s, seed=3).indices.tolist()) for s in ("train", "val")}
    assert set(sets["train"].pool.tolist()) == fm["train"] and set(sets["val"].pool.tolist()) == fm["val"]
    assert not fm["train"] & fm["val"] and len(sets["test"].pool) == 10_000
    assert (sets["train"].official_split, sets["val"].official_split, sets["test"].official_split) == \
        ("train", "train", "test")
    for split, ds in sets.items():
        used = {int(v) for i in range(N) for v in ds.scene(i).sources}
        assert used <= set(ds.pool.tolist()), split
    # the article pixels are the pool's: test_targets_match_the_rerendered_articles re-renders them from sources


def test_registry_collate_and_errors():
    assert "fashion-scenes" in DATASET_NAMES and SCENE_CLASSES[0] == "background" and len(SCENE_CLASSES) == 11
    ds = build_dataset("fashion-scenes", split="val", num_samples=6, seed=3)
    assert isinstance(ds, FashionScenesDataset) and ds.num_classes == 11 and ds.class_names == SCENE_CLASSES
    assert len(ds) == 6 and torch.equal(ds[5][0], FashionScenesDataset("val", num_samples=6, seed=3)[5][0])
    images, targets = next(iter(DataLoader(ds, batch_size=4, collate_fn=collate_scenes)))
    assert images.shape == (4, 3, 64, 64) and [t["image_id"] for t in targets] == [0, 1, 2, 3]
    assert torch.stack([t["semantic"] for t in targets]).shape == (4, 64, 64)
    raw = FashionScenesDataset("val", num_samples=2, seed=3, normalize=False)[0][0]
    assert torch.equal((raw[0] * 255).round().to(torch.uint8), ds.scene(0).pixels)
    with pytest.raises(ValueError, match="max_iou must be a number in"):
        FashionScenesDataset("val", max_iou=1.5)
    with pytest.raises(ValueError, match="image_size must be an int in"):
        FashionScenesDataset("val", image_size=32)  # below max_size 36
    with pytest.raises(ValueError, match="with_masks"):
        build_dataset("fashion-scenes", split="val", with_masks=True)
    crowded = FashionScenesDataset("val", min_objects=4, min_size=36, max_iou=0.0, max_tries=3, seed=3)
    with pytest.raises(RuntimeError, match="scene 0: no position for article"):
        crowded.scene(0)


def test_scenes_figure_draws_boxes_masks_and_names(sets):
    from mkviz.viz.scene_figures import scenes_figure

    ds = sets["val"]
    items = [ds[i] for i in range(3)]
    fig = scenes_figure(ds.images_uint8([0, 1, 2]), [t for _, t in items], cols=2)
    n = sum(len(t["labels"]) for _, t in items)
    names = [tr.name for tr in fig.data]
    assert names.count("image") == 3 and sum(x.startswith("box") for x in names) == n
    assert sum(x.startswith("mask") for x in names) == n and len(fig.layout.annotations) == n
    assert {a.text for a in fig.layout.annotations} <= set(SCENE_CLASSES[1:])
