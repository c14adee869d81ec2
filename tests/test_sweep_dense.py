"""A sweep over the dense tasks: segmentation and detection on fashion-scenes, each dataset entry its own task and
metric (`report.metric: {seg: test_miou, det: test_map}`), through the same runs, records and page blocks."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from mkviz.studies.sweep import forward_flops, run_sweep
from mkviz.studies.sweep_config import load_sweep
from mkviz.studies.sweep_report import render_blocks, report_metric, summarize
from mkviz.training.config import TrainConfig, model_spec, num_classes_of
from mkviz.training.tasks import TASKS

DENSE = {
    "name": "dense_micro", "plots_dir": None, "seeds": [0, 1], "jobs": 1, "baseline": "baseline",
    "common": {"dataset": "fashion-scenes", "timm_kwargs": {"depth": 2, "embed_dim": 32}, "num_train": 16,
               "num_eval": 8, "batch_size": 8, "epochs": 2, "lr": 2e-3},
    "datasets": {"seg": {"task": "segmentation"}, "det": {"task": "detection"}},
    "configs": {"baseline": {"variant": "baseline"}, "vanillak-2": {"variant": "vanillak", "num_charts": 2}},
    "report": {"metric": {"seg": "test_miou", "det": "test_map"}, "primary": [["vanillak-2", "baseline"]],
               "family": "stated", "equivalence_margin": 0.01},
}


@pytest.fixture(scope="module")
def dense_sweep(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dense")
    sweep = {**DENSE, "results_dir": str(tmp / "res"), "runs_dir": str(tmp / "runs"), "page": str(tmp / "page.md")}
    (tmp / "dense.yaml").write_text(yaml.safe_dump(sweep))
    sweep = load_sweep(tmp / "dense.yaml")
    records, failures = run_sweep(sweep, jobs=1)
    assert failures == []
    return sweep, records


@pytest.mark.slow
def test_dense_records_carry_their_tasks_metrics(dense_sweep):
    sweep, records = dense_sweep
    assert len(records) == 8
    for r in records:
        task = {"seg": "segmentation", "det": "detection"}[r["dataset"]]
        assert r["task"] == task and r["headline"] == {"segmentation": "miou", "detection": "map"}[task]
        assert 0.0 <= r[f"test_{r['headline']}"] <= 1.0 and r["test_loss"] > 0 and r["flops"] > 0
        assert r["flops_of"] == ("backbone" if task == "detection" else "model")
        assert "test_acc" not in r and "test_acc_one_hot" not in r
        assert r["history"][-1][f"val_{r['headline']}"] == pytest.approx(r[f"val_{r['headline']}"])


@pytest.mark.slow
def test_dense_page_blocks_compare_each_tasks_metric(dense_sweep):
    sweep, records = dense_sweep
    summary = summarize(records, sweep)
    for dataset, metric in (("seg", "test_miou"), ("det", "test_map")):
        recs = [r for r in records if r["dataset"] == dataset and r["config"] == "vanillak-2"]
        assert summary[dataset]["vanillak-2"]["mean"] == pytest.approx(np.mean([r[metric] for r in recs]))
    blocks = render_blocks(sweep, records, summary)
    assert "test miou" in blocks["results-seg"] and "test map" in blocks["results-det"]
    assert "`vanillak-2` − `baseline` | primary" in blocks["comparisons-seg"]
    assert "val miou %" in blocks["curves-seg"] and "val map %" in blocks["curves-det"]
    assert "| – (8) |" in blocks["cost-det"]  # a detector's step FLOPs are not counted
    assert "| backbone MFLOPs |" in blocks["results-det"] and "| MFLOPs |" in blocks["results-seg"]
    assert "forward MFLOPs/image (backbone)" in blocks["cost-det"]


def test_report_metric_per_dataset_and_bad_values():
    sweep = {"name": "s", "datasets": {"seg": {}, "det": {}}, "report": {"metric": {"seg": "test_miou"}}}
    assert report_metric(sweep, "seg") == "test_miou"
    with pytest.raises(ValueError, match="report.metric must name a metric for every dataset"):
        report_metric(sweep, "det")
    with pytest.raises(ValueError, match="report.metric must be one of"):
        report_metric({"name": "s", "report": {"metric": "accuracy"}})


def _detector(train: dict, seed: int) -> torch.nn.Module:
    cfg = TrainConfig(**{k: v for k, v in train.items() if k != "device"}).resolved()
    return TASKS["detection"].build(model_spec(cfg, num_classes_of(cfg)), False, seed).eval()


def test_detector_flops_are_its_backbones_and_do_not_depend_on_the_weights():
    """A whole detector's count includes heads run on its detections (a zero image: as many as the weights give);
    `forward_flops` counts the backbone and pyramid, the same for any weights."""
    train = {"task": "detection", "dataset": "fashion-scenes", "preset": "scenes", "variant": "vanillak",
             "num_charts": 8}
    a, b = _detector(train, 0), _detector(train, 1)
    assert forward_flops(a, "detection", 64) == forward_flops(b, "detection", 64) > 0
    with torch.no_grad():
        for p in b.roi_heads.parameters():
            p.mul_(3.0)                                   # other heads, other detections
    assert forward_flops(a, "detection", 64) == forward_flops(b, "detection", 64)


def test_committed_detection_records_count_the_backbone():
    for path in sorted(Path("docs/results/dense_fmnist").glob("det__*.json")):
        rec = json.loads(path.read_text())
        assert rec["flops_of"] == "backbone", path
        assert rec["flops"] == forward_flops(_detector(rec["train"], 0), "detection", 64), path


def test_stated_test_adjusts_across_datasets():
    """The stated test of a sweep over two tasks: Holm over the primary comparison of both datasets (and, for a
    control, over all four stated comparisons), on the paired t-test and on the TOST, with each reading."""
    from mkviz.studies import stats
    from mkviz.studies.sweep_analysis import stated_test_block

    sweep = {"baseline": "baseline", "configs": {"baseline": {}, "v": {}, "k": {}},
             "report": {"primary": [["v", "baseline"]], "controls": [["k", "baseline"]], "family": "stated",
                        "equivalence_margin": 0.01}}
    base = {0: 0.40, 1: 0.41, 2: 0.39, 3: 0.40}
    rows = {"seg": {"baseline": {"accs": base}, "v": {"accs": {s: x + 0.001 * (-1) ** s for s, x in base.items()}},
                    "k": {"accs": {s: x - 0.05 - 0.002 * s for s, x in base.items()}}},
            "det": {"baseline": {"accs": base}, "v": {"accs": {s: x + 0.004 + 0.003 * (-1) ** s for s, x in base.items()}},
                    "k": {"accs": {s: x + 0.01 * (-1) ** s for s, x in base.items()}}}}
    lines = [ln for ln in stated_test_block(sweep, rows).splitlines() if ln.startswith("| `")]
    assert [ln.split(" | ")[:3] for ln in lines] == [["| `seg`", "`v` − `baseline`", "primary"],
                                                     ["| `seg`", "`k` − `baseline`", "control"],
                                                     ["| `det`", "`v` − `baseline`", "primary"],
                                                     ["| `det`", "`k` − `baseline`", "control"]]
    pairs = [(rows[d][c]["accs"], base) for d in ("seg", "det") for c in ("v", "k")]
    p = [stats.paired(a, b)["p"] for a, b in pairs]
    t = [stats.tost_paired(a, b, 0.01)["p"] for a, b in pairs]
    primary_p, primary_t = stats.holm([p[0], p[2]]), stats.holm([t[0], t[2]])
    family_p, family_t = stats.holm(p), stats.holm(t)
    fmt = lambda x: "<0.001" if x < 0.001 else f"{x:.3f}"  # noqa: E731
    cells = [ln.split(" | ") for ln in lines]
    assert [c[6] for c in cells] == [fmt(primary_p[0]), fmt(family_p[1]), fmt(primary_p[1]), fmt(family_p[3])]
    assert [c[8] for c in cells] == [fmt(primary_t[0]), fmt(family_t[1]), fmt(primary_t[1]), fmt(family_t[3])]
    assert [c[9] for c in cells] == ["the 2 primary", "all 4", "the 2 primary", "all 4"]
    assert cells[0][10] == "**equivalent** |" and cells[1][10] == "**differs** |"   # tiny Δ; a 5-point drop
    assert cells[3][10] == "inconclusive |"                                         # ±1 point of noise
    with pytest.raises(ValueError, match="report.equivalence_margin is needed"):
        stated_test_block({**sweep, "report": {**sweep["report"], "equivalence_margin": None}}, rows)
