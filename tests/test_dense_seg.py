"""Semantic segmentation of the Fashion-MNIST scenes (mkviz.core.segmentation, mkviz.training.tasks): shapes, a few
training steps with a converted backbone, conversion leaving the logits unchanged, the metrics against hand-made
predictions, and `mkviz train --task segmentation` writing, loading and resuming checkpoints exactly."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

import mkviz
from mkviz.core.segmentation import SegmentationModel, build_segmenter
from mkviz.data import FASHION_MNIST_SYSTEM_DIR, FashionScenesDataset, collate_scenes
from mkviz.training import TASKS, TrainConfig, config_from_args, load_checkpoint, train
from mkviz.training import checkpoint as ckpt
from mkviz.training.tasks import detection_step, evaluate_segmentation, segmentation_step

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(not (FASHION_MNIST_SYSTEM_DIR / "t10k-images-idx3-ubyte.gz").is_file(),
                                 reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")]

VIT = dict(img_size=64, patch_size=8, embed_dim=32, depth=2, num_heads=2)
SWIN = dict(img_size=64, patch_size=4, window_size=4, embed_dim=16, depths=(2, 2), num_heads=(2, 4))


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, list[dict]]:
    ds = FashionScenesDataset("val", num_samples=8, seed=0)
    return collate_scenes([ds[i] for i in range(8)])


def test_few_steps_with_a_converted_backbone_lower_the_loss(batch):
    torch.manual_seed(0)
    model = mkviz.convert(build_segmenter("vit_tiny_patch16_224", 11, indices=2, **VIT), "vanillak", 4)
    images, targets = batch
    out = model(images)
    assert out.shape == (8, 11, 64, 64) and model.indices == [0, 1]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        loss, n, correct = segmentation_step(model, images, targets, 0.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert n == 8 and 0 <= correct <= 8
    assert losses[-1] < 0.5 * losses[0], losses  # measured: 2.61 -> 0.75


@pytest.mark.parametrize("name, kwargs", [("vit_tiny_patch16_224", VIT), ("swin_tiny_patch4_window7_224", SWIN)])
def test_conversion_leaves_the_segmentation_logits_unchanged(batch, name, kwargs):
    torch.manual_seed(0)
    model = build_segmenter(name, 11, indices=2, **kwargs).eval()
    converted = mkviz.convert(model, "vanillak", 4).eval()
    assert any(True for _ in mkviz.manifold_modules(converted)) and not any(True for _ in mkviz.manifold_modules(model))
    with torch.no_grad():
        diff = (converted(batch[0]) - model(batch[0])).abs().max().item()
    assert diff <= 1e-5, diff  # measured: ~5e-7


class _Oracle(nn.Module):
    """Logits (B, 11, H, W) of a fixed prediction per image: the truth, or background everywhere."""

    def __init__(self, truth: bool) -> None:
        super().__init__()
        self.truth, self.num_classes, self.anchor = truth, 11, nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.one_hot(self.pred, 11).permute(0, 3, 1, 2).float() * 10.0


def test_segmentation_metrics_against_hand_made_predictions(batch):
    images, targets = batch
    truth = torch.stack([t["semantic"] for t in targets])
    model = _Oracle(True)
    model.pred = truth
    perfect = evaluate_segmentation(model, [(images, targets)])
    assert perfect["miou"] == pytest.approx(1.0) and perfect["pixel_acc"] == pytest.approx(1.0)
    assert perfect["count"] == truth.numel()
    model.pred = torch.zeros_like(truth)
    bg = evaluate_segmentation(model, [(images, targets)])
    share = float((truth == 0).float().mean())  # IoU of the background; every other class present scores 0
    assert bg["pixel_acc"] == pytest.approx(share)
    assert bg["miou"] == pytest.approx(share / len(truth.unique()))


def test_detection_step_sums_a_torchvision_detectors_losses(batch):
    class Stub(nn.Module):
        def forward(self, images, targets):
            assert isinstance(images, list) and images[0].shape == (3, 64, 64) and len(targets) == len(images)
            return {"loss_classifier": torch.tensor(0.5), "loss_mask": torch.tensor(0.25)}

    assert detection_step(Stub(), batch[0], batch[1], 0.1) == (torch.tensor(0.75), 8, 0.0)


def _cfg(out, **kw) -> TrainConfig:
    return TrainConfig(task="segmentation", dataset="fashion-scenes", timm_kwargs=dict(depth=2, embed_dim=32),
                       num_train=32, num_eval=16, batch_size=8, epochs=1, lr=3e-3, out=str(out), quiet=True, **kw)


def test_train_segmentation_checkpoints_load_and_resume_exactly(tmp_path):
    ref = train(_cfg(tmp_path / "ref"))
    row = ref["history"][0]
    assert {"train_loss", "train_pixel_acc", "val_loss", "val_miou", "val_pixel_acc"} <= set(row)
    assert 0.0 < row["val_miou"] < 1.0 and set(ref["test"]) == {"loss", "miou", "pixel_acc"}
    model, config = load_checkpoint(tmp_path / "ref" / "final")
    assert isinstance(model, SegmentationModel) and config["model_spec"]["task"] == "segmentation"
    x = FashionScenesDataset("val", num_samples=2, seed=0)[0][0][None]
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref["model"].eval()(x), rtol=0, atol=0)

    train(_cfg(tmp_path / "cut", max_steps=2))  # stops (with a checkpoint) inside the epoch of 4 steps
    assert ckpt.read_json(ckpt.find_checkpoint(tmp_path / "cut") / ckpt.STATE_FILE)["step"] == 2
    resumed = train(_cfg(tmp_path / "cut", resume=True))
    a, _ = ckpt.load_tensors(tmp_path / "ref" / "final" / ckpt.MODEL_FILE)
    b, _ = ckpt.load_tensors(tmp_path / "cut" / "final" / ckpt.MODEL_FILE)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["history"] == [{**row, "time": resumed["history"][0]["time"]}]


def test_task_errors_name_the_argument_and_its_values(tmp_path):
    with pytest.raises(ValueError, match="task must be one of classification, segmentation.*, got 'detect'"):
        TrainConfig(task="detect", dataset="fashion-scenes").resolved()
    with pytest.raises(ValueError, match="--task segmentation trains on --dataset fashion-scenes, got --dataset "
                                         "fashion-mnist"):
        TrainConfig(task="segmentation", dataset="fashion-mnist").resolved()
    with pytest.raises(ValueError, match="--task classification trains on --dataset shapes or .*use --task "
                                         "segmentation"):
        TrainConfig(dataset="fashion-scenes").resolved()
    cfg = config_from_args(["--task", "Segmentation", "--dataset", "fashion-scenes", "--head-layers", "2"]).resolved()
    assert (cfg.task, cfg.preset, cfg.image_size, cfg.timm_kwargs["img_size"]) == ("segmentation", "scenes", 64, 64)
    assert {"classification", "segmentation"} <= set(TASKS)


@pytest.mark.parametrize("task", ["segmentation", "detection"])
def test_a_dense_run_starts_from_a_classification_checkpoints_backbone(tmp_path, task):
    """`--init-from` a baseline classifier (same trunk, 64 px Fashion-MNIST): the dense model's trunk, converted
    to VanillaK-2, computes the classifier's features before the first step; the heads are its own."""
    trunk_kwargs = dict(depth=2, embed_dim=32)
    classifier = train(TrainConfig(dataset="fashion-mnist", preset="scenes", image_size=64, timm_kwargs=trunk_kwargs,
                                   num_train=32, num_eval=16, batch_size=16, epochs=1, out=str(tmp_path / "cls"),
                                   quiet=True))["model"].eval()
    dense = TrainConfig(**{**_cfg(tmp_path / "dense").to_dict(), "task": task, "variant": "vanillak", "num_charts": 2,
                           "init_from": str(tmp_path / "cls"), "lr": 1e-12, "min_lr": 0.0, "weight_decay": 0.0})
    model = train(dense)["model"].eval()
    trunk = getattr(model.backbone, "trunk", model.backbone)
    x = torch.rand(2, 3, 64, 64)
    last = lambda m: m.forward_intermediates(x, indices=[1], norm=False, intermediates_only=True)[0]  # noqa: E731
    with torch.no_grad():
        diff = (last(trunk) - last(classifier)).abs().max().item()        # (2, 32, 8, 8): the last block's tokens
    assert diff < 1e-4 and mkviz.manifold_modules(trunk)                      # converted, same function
    with pytest.raises(ckpt.CheckpointError, match=f"a {task} checkpoint; a dense run starts from a classification"):
        train(TrainConfig(**{**dense.to_dict(), "init_from": str(tmp_path / "dense"), "out": str(tmp_path / "x")}))
