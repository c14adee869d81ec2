"""Detection and instance segmentation (mkviz/core/pyramid.py, mkviz/core/detection.py,
mkviz/explain/detection_metrics.py) on a hand-made batch of 64x64 scenes: filled rectangles and ellipses."""
from __future__ import annotations

import copy

import pytest
import timm
import torch

import mkviz
from mkviz.core.detection import build_detector, detection_loss
from mkviz.core.pyramid import PYRAMID_STRIDES, PyramidBackbone, SimpleFeaturePyramid
from mkviz.explain.detection_metrics import coco_map, detection_map
from mkviz.data.scenes import FashionScenesDataset, collate_scenes
from mkviz.training import checkpoint as ckpt
from mkviz.training.build import load_checkpoint
from mkviz.training.config import TrainConfig
from mkviz.training.loop import train
from mkviz.training.tasks import evaluate_detection
from torchvision.models.detection import MaskRCNN

from small_models import randomized

pytestmark = pytest.mark.usefixtures("one_thread")
pytest.importorskip("torchmetrics")
pytest.importorskip("pycocotools")

SIZE = 64
# per image: (label, shape, x0, y0, x1, y1) with the box's far edges exclusive, 20-36 px articles
SCENES = [
    [(1, "rect", 4, 6, 28, 34), (5, "ellipse", 34, 30, 62, 62)],
    [(3, "ellipse", 2, 2, 32, 26), (7, "rect", 30, 28, 52, 60)],
    [(5, "rect", 36, 4, 60, 40), (1, "ellipse", 4, 34, 30, 62), (3, "rect", 8, 4, 30, 26)],
    [(7, "ellipse", 14, 10, 50, 44)],
]


def scene(objects: list[tuple]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """An image (3, 64, 64), background -1, each article a flat colour of its label; its target."""
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")  # each (64, 64)
    image = torch.full((3, SIZE, SIZE), -1.0)
    masks = []
    for label, shape, x0, y0, x1, y1 in objects:
        if shape == "rect":
            mask = (xx >= x0) & (xx < x1) & (yy >= y0) & (yy < y1)
        else:
            cx, cy, rx, ry = (x0 + x1 - 1) / 2, (y0 + y1 - 1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
            mask = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1
        image[:, mask] = torch.tensor([label / 4 - 1, 1 - label / 8, (label % 3) / 2])[:, None]
        masks.append(mask)
    masks_t = torch.stack(masks).to(torch.uint8)  # (N, 64, 64)
    boxes = torch.tensor([[x0, y0, x1, y1] for _, _, x0, y0, x1, y1 in objects], dtype=torch.float32)
    labels = torch.tensor([o[0] for o in objects], dtype=torch.int64)
    return image, dict(boxes=boxes, labels=labels, masks=masks_t)


@pytest.fixture(scope="module")
def batch() -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    images, targets = zip(*(scene(objects) for objects in SCENES))
    return list(images), list(targets)


def detector(backbone: str = "vit", **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_detector(backbone, **kwargs)


# ----------------------------------------------------------------------------- the pyramid
@pytest.mark.parametrize("backbone", ["vit", "swin"])
def test_pyramid_maps_have_the_documented_shapes_and_strides(backbone):
    model = detector(backbone)
    assert model.backbone.out_channels == 64
    maps = model.backbone(torch.randn(2, 3, SIZE, SIZE))
    assert {k: tuple(v.shape) for k, v in maps.items()} == {
        "p2": (2, 64, 16, 16), "p3": (2, 64, 8, 8), "p4": (2, 64, 4, 4), "p5": (2, 64, 2, 2)}
    assert [SIZE // v.shape[-1] for v in maps.values()] == list(PYRAMID_STRIDES) == [4, 8, 16, 32]
    generator = model.rpn.anchor_generator
    assert generator.sizes == ((16,), (24,), (32,), (48,)) and generator.num_anchors_per_location() == [3] * 4
    assert model.transform.min_size == (SIZE,) and model.transform.max_size == SIZE
    assert model.transform.image_mean == [0.0] * 3 and model.transform.image_std == [1.0] * 3


def test_a_plain_vit_feeds_the_pyramid_its_last_block_and_swin_its_stages():
    vit = detector("vit").backbone
    assert vit.indices == [3] and vit.pyramid.sources == [0, 0, 0, 0]
    assert [type(level[0]).__name__ for level in vit.pyramid.levels.values()] == [
        "Sequential", "Identity", "MaxPool2d", "MaxPool2d"]  # a 2x deconvolution at stride 4
    swin = detector("swin").backbone
    assert swin.indices == [0, 1, 2, 3] and swin.pyramid.sources == [0, 1, 2, 3]
    coarse = detector("vit", patch_size=16).backbone  # 4x4 tokens: stride 4 needs two deconvolutions
    assert len([m for m in coarse.pyramid.levels["p2"][0] if isinstance(m, torch.nn.ConvTranspose2d)]) == 2
    assert coarse(torch.randn(1, 3, SIZE, SIZE))["p2"].shape == (1, 64, 16, 16)
    pyramid = SimpleFeaturePyramid([8], [2], strides=(2, 4), out_channels=16)
    assert [tuple(m.shape) for m in pyramid([torch.randn(1, 8, 32, 32)]).values()] == [(1, 16, 32, 32),
                                                                                      (1, 16, 16, 16)]


# ----------------------------------------------------------------------------- training and evaluation
@pytest.mark.parametrize("variant, options", [("vanillak", dict(num_charts=8)),
                                              ("kua", dict(num_charts=4, ua_weight=0.01))])
def test_a_few_steps_make_the_summed_loss_fall(batch, variant, options):
    images, targets = batch
    model = detector("vit", variant=variant, **options).train()
    assert any(True for _ in mkviz.manifold_modules(model))
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    torch.manual_seed(0)
    losses = []
    for _ in range(16):
        loss = detection_loss(model, images, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    ratio = sum(losses[-3:]) / sum(losses[:3])
    assert ratio < 0.5, (ratio, losses)


def test_eval_outputs_have_the_documented_keys_and_shapes(batch):
    assert (mkviz.build_detector, mkviz.detection_loss, mkviz.detection_map) == (build_detector, detection_loss,
                                                                                  detection_map)
    images, _ = batch
    model = detector("vit").eval()
    with torch.no_grad():
        outputs = model(images)
    assert len(outputs) == len(images)
    for out in outputs:
        assert set(out) == {"boxes", "labels", "scores", "masks"}
        k = len(out["scores"])
        assert 0 < k <= 20 and out["boxes"].shape == (k, 4) and out["labels"].dtype == torch.int64
        assert out["masks"].shape == (k, 1, SIZE, SIZE) and 0 <= out["masks"].min() <= out["masks"].max() <= 1
        assert ((out["labels"] >= 1) & (out["labels"] <= 10)).all()
    boxes_only = detector("vit", masks=False).eval()
    with torch.no_grad():
        assert set(boxes_only(images[:1])[0]) == {"boxes", "labels", "scores"}


@pytest.mark.parametrize("backbone, variant", [("vit", "vanillak"), ("vit", "kua"), ("swin", "vanillak")])
def test_conversion_leaves_the_detector_unchanged(batch, backbone, variant):
    images, _ = batch
    plain = detector(backbone).eval()
    randomized(plain.backbone.trunk)  # outputs of order 1 in every block
    converted = mkviz.convert(plain, variant, num_charts=4)
    assert any(True for _ in mkviz.manifold_modules(converted)) and not any(True for _ in
                                                                             mkviz.manifold_modules(plain))
    x = torch.stack(images)  # (4, 3, 64, 64)
    with torch.no_grad():
        before, after = plain.backbone(x), converted.backbone(x)
        assert max((before[k] - after[k]).abs().max().item() for k in before) <= 1e-4
        assert before["p2"].abs().mean() > 0.1
        out_before, out_after = plain(images), converted(images)
    for a, b in zip(out_before, out_after):
        assert len(a["scores"]) > 0 and torch.equal(a["labels"], b["labels"])
        for key in ("boxes", "scores", "masks"):
            assert (a[key] - b[key]).abs().max().item() <= 1e-4, key


# ----------------------------------------------------------------------------- mAP
class Oracle(torch.nn.Module):
    """A 'detector' that returns given predictions, one per image, in order."""

    def __init__(self, predictions: list[dict[str, torch.Tensor]]) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.predictions = predictions

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        assert not self.training
        taken, self.predictions = self.predictions[:len(images)], self.predictions[len(images):]
        return taken


def as_predictions(targets: list[dict], shift: int = 0) -> list[dict[str, torch.Tensor]]:
    """Targets as torchvision predictions of score 1, boxes and masks moved `shift` px right and down."""
    return [dict(boxes=t["boxes"] + shift, labels=t["labels"], scores=torch.ones(len(t["labels"])),
                 masks=torch.roll(t["masks"], (shift, shift), dims=(1, 2))[:, None].float()) for t in targets]


def test_map_is_one_for_perfect_predictions_and_lower_for_shifted_ones(batch):
    images, targets = batch
    oracle = Oracle(as_predictions(targets)).train()
    perfect = detection_map(oracle, [(images[:2], targets[:2]), (images[2:], targets[2:])])
    assert oracle.training and perfect["images"] == 4
    for key in ("box_map", "box_map_50", "box_map_75", "mask_map", "mask_map_50", "mask_map_75"):
        assert perfect[key] == pytest.approx(1.0), key
    assert perfect["box_map_per_class"] == {1: 1.0, 3: 1.0, 5: 1.0, 7: 1.0}
    shifted = coco_map(as_predictions(targets, shift=3), targets)
    assert 0.25 < shifted["box_map"] < 0.45 and 0.25 < shifted["mask_map"] < 0.45  # IoU about 0.6 an article
    assert shifted["box_map_50"] == pytest.approx(1.0) and shifted["box_map_75"] < 0.5
    boxes_only = coco_map([{k: v for k, v in p.items() if k != "masks"} for p in as_predictions(targets)], targets,
                          class_metrics=False)
    assert boxes_only == {"box_map": 1.0, "box_map_50": 1.0, "box_map_75": 1.0}


def test_detection_map_of_an_untrained_detector_is_a_number_in_range(batch):
    images, targets = batch
    result = detection_map(detector("vit").train(), [(images, targets)], class_metrics=False)
    assert set(result) == {"box_map", "box_map_50", "box_map_75", "mask_map", "mask_map_50", "mask_map_75",
                           "images"}
    assert all(0 <= result[k] <= 1 for k in result if k != "images")


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs, message", [
    (dict(backbone="resnet18"), "expected a timm ViT-style or Swin-style model"),
    (dict(backbone="no_such_model"), "unknown model 'no_such_model'"),
    (dict(backbone=torch.nn.Linear(2, 2)), "expected a timm ViT-style or Swin-style model"),
    (dict(num_classes=1), "num_classes must be an int >= 2"),
    (dict(image_size=60), "60 is not divisible by the backbone's patch size 8"),
    (dict(image_size=48, patch_size=16), "48 is not divisible by the pyramid's coarsest stride 32"),
    (dict(image_size=16), "image_size must be an int >= 32"),
    (dict(nope=1), r"does not accept \[.nope.\]"),
])
def test_bad_input_is_one_clear_line(kwargs, message):
    with pytest.raises(ValueError, match=message) as info:
        build_detector(**{"backbone": "vit", **kwargs})
    assert "\n" not in str(info.value)


def test_a_model_built_for_another_size_or_given_kwargs_is_refused(batch):
    vit32 = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2)
    with pytest.raises(ValueError, match=r"built for \(32, 32\) images, not 64x64"):
        build_detector(copy.deepcopy(vit32))
    with pytest.raises(ValueError, match="apply to a backbone given by name"):
        build_detector(vit32, image_size=32, variant="kua")
    assert isinstance(build_detector(vit32, image_size=32).backbone, PyramidBackbone)
    images, targets = batch
    with pytest.raises(ValueError, match="call model.train"):
        detection_loss(detector("vit").eval(), images, targets)


# ----------------------------------------------------------------------------- through `mkviz train`
def _det_cfg(out, **kw):
    return TrainConfig(task="detection", dataset="fashion-scenes", variant="vanillak", num_charts=4,
                       timm_kwargs=dict(depth=2, embed_dim=32), num_train=16, num_eval=8, batch_size=4, epochs=1,
                       lr=2e-3, out=str(out), quiet=True, **kw)


def test_train_detection_checkpoints_load_and_resume_exactly(tmp_path):


    ref = train(_det_cfg(tmp_path / "ref"))
    row = ref["history"][0]
    assert {"train_loss", "val_loss", "val_map", "val_map_50", "val_mask_map", "val_mask_map_50"} <= set(row)
    assert 0.0 <= row["val_map"] <= row["val_map_50"] <= 1.0 and row["val_loss"] > 0
    assert set(ref["test"]) == {"loss", "map", "map_50", "mask_map", "mask_map_50"}
    model, config = load_checkpoint(tmp_path / "ref" / "final")
    assert isinstance(model, MaskRCNN) and config["model_spec"]["task"] == "detection"
    assert len(list(mkviz.manifold_modules(model))) == 2  # the converted trunk came back
    x = FashionScenesDataset("val", num_samples=1, seed=0)[0][0]
    with torch.no_grad():
        a, b = model.eval()([x])[0], ref["model"].eval()([x])[0]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    train(_det_cfg(tmp_path / "cut", max_steps=2))  # stops (with a checkpoint) inside the epoch of 4 steps
    resumed = train(_det_cfg(tmp_path / "cut", resume=True))
    w1, _ = ckpt.load_tensors(tmp_path / "ref" / "final" / ckpt.MODEL_FILE)
    w2, _ = ckpt.load_tensors(tmp_path / "cut" / "final" / ckpt.MODEL_FILE)
    assert w1.keys() == w2.keys() and all(torch.equal(w1[k], w2[k]) for k in w1)
    assert resumed["history"] == [{**row, "time": resumed["history"][0]["time"]}]


def test_detection_evaluation_leaves_the_random_state_alone():

    model = build_detector("vit", image_size=64)
    loader = torch.utils.data.DataLoader(FashionScenesDataset("val", num_samples=4, seed=0), batch_size=2,
                                         collate_fn=collate_scenes)
    state = torch.get_rng_state()
    scores = evaluate_detection(model, loader)
    assert torch.equal(state, torch.get_rng_state()) and scores["count"] == 4 and scores["loss"] > 0
    with pytest.raises(ValueError, match="task: detection evaluates in one process"):
        evaluate_detection(model, loader, distributed=True)
