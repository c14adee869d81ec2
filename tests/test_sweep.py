"""The reproduction sweep: configs, resumability, statistics, and the committed page in sync with its JSON."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import yaml
from scipy import stats

from mkviz import sweep_report
from mkviz.apps.cli import main as cli
from mkviz.studies.sweep import run_state, run_sweep
from mkviz.studies.sweep_config import expand_runs, load_sweep, match_mlp_ratio
from mkviz.training.loop import train
from mkviz.training.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
REPRO = ROOT / "configs" / "repro_small.yaml"

MICRO = {
    "name": "micro", "results_dir": "res", "runs_dir": "runs", "page": "page.md", "plots_dir": None,
    "seeds": [0, 1], "jobs": 1,
    "common": {"preset": "micro", "batch_size": 16, "epochs": 2},
    "datasets": {"shapes": {"dataset": "shapes", "num_train": 64, "num_val": 32, "num_test": 32}},
    "configs": {"baseline": {"variant": "baseline"}, "vanillak-2": {"variant": "vanillak", "num_charts": 2}},
}


def _write(tmp_path: Path, sweep: dict, name: str = "micro.yaml") -> Path:
    sweep = {**sweep, "results_dir": str(tmp_path / "res"), "runs_dir": str(tmp_path / "runs"),
             "page": str(tmp_path / "page.md")}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(sweep))
    return path


def test_param_matched_control_matches_vanillak8(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # the sweep file's paths are relative to the repository root
    sweep = load_sweep(REPRO)
    runs = {r.run_id: r for r in expand_runs(sweep, "shapes__*__s0")}
    from mkviz.studies.sweep_config import params_of
    wide = params_of(TrainConfig(**runs["shapes__baseline-wide__s0"].train))
    target = params_of(TrainConfig(**runs["shapes__vanillak-8__s0"].train))
    base = params_of(TrainConfig(**runs["shapes__baseline__s0"].train))
    assert abs(wide - target) / target < 1e-3, (wide, target)
    assert wide > 1.5 * base                                   # the control really is bigger than the baseline
    # the ratio lands on an integer hidden width through timm's int(width * mlp_ratio)
    ratio = runs["shapes__baseline-wide__s0"].train["timm_kwargs"]["mlp_ratio"]
    assert int(64 * ratio) == round(64 * ratio - 0.5)
    with pytest.raises(ValueError, match="variant 'vanillak'"):
        match_mlp_ratio(TrainConfig(preset="micro", variant="vanillak"), 1000)


def test_sweep_skips_finished_and_resumes_unfinished(tmp_path: Path) -> None:
    sweep = load_sweep(_write(tmp_path, MICRO))
    records, failures = run_sweep(sweep, jobs=1)
    assert not failures and len(records) == 4
    assert {r["_state"] for r in records} == {"todo"}
    res = tmp_path / "res"
    files = sorted(res.glob("*.json"))
    assert [f.name for f in files] == ["shapes__baseline__s0.json", "shapes__baseline__s1.json",
                                       "shapes__vanillak-2__s0.json", "shapes__vanillak-2__s1.json"]
    first = {f.name: json.loads(f.read_text()) for f in files}
    assert all(r["epochs"] == 2 and r["steps"] == 8 and len(r["history"]) == 2 for r in first.values())
    # identical data order and schedule across configurations: same seed -> same steps, same lr curve
    lr = lambda name: [h["lr"] for h in first[name]["history"]]  # noqa: E731
    assert lr("shapes__baseline__s0.json") == lr("shapes__vanillak-2__s0.json")

    # a second call runs nothing and leaves every file as it was
    mtimes = {f: f.stat().st_mtime_ns for f in files}
    records, _ = run_sweep(sweep, jobs=1)
    assert {r["_state"] for r in records} == {"skipped"} and len(records) == 4
    assert {f: f.stat().st_mtime_ns for f in files} == mtimes

    # an interrupted run (3 of 8 steps, checkpoint on disk, no JSON) is continued, not restarted
    run = next(r for r in expand_runs(sweep) if r.run_id == "shapes__vanillak-2__s1")
    (res / f"{run.run_id}.json").unlink()
    shutil.rmtree(tmp_path / "runs" / run.run_id)
    train(TrainConfig(**run.train, out=str(tmp_path / "runs" / run.run_id), max_steps=3, quiet=True))
    assert run_state(sweep, run) == "partial"
    records, failures = run_sweep(sweep, jobs=1)
    assert not failures
    resumed = next(r for r in records if r["run_id"] == run.run_id)
    assert resumed["_state"] == "partial" and resumed["resumed"] is True
    before = first[f"{run.run_id}.json"]
    # on CPU with a fixed seed the resumed run ends exactly where the uninterrupted one did
    assert resumed["test_loss"] == before["test_loss"] and resumed["test_acc"] == before["test_acc"]
    assert [h["train_loss"] for h in resumed["history"]] == [h["train_loss"] for h in before["history"]]


def test_changed_settings_are_never_silently_mixed(tmp_path: Path) -> None:
    sweep = load_sweep(_write(tmp_path, MICRO))
    run_sweep(sweep, jobs=1, only="shapes__baseline__s0")
    changed = {**MICRO, "common": {**MICRO["common"], "epochs": 3}}
    sweep2 = load_sweep(_write(tmp_path, changed, "changed.yaml"))
    with pytest.raises(ValueError, match=r"shapes__baseline__s0\.json was made with other settings: epochs=2"):
        run_sweep(sweep2, jobs=1)
    assert json.loads((tmp_path / "res" / "shapes__baseline__s0.json").read_text())["epochs"] == 2


@pytest.mark.parametrize("patch, message", [
    ({"seeds": [0, 0]}, "'seeds' must be a list of distinct integers"),
    ({"colour": 1}, "unknown keys \\['colour'\\]"),
    ({"baseline": "nope"}, "baseline 'nope' is not one of the configs"),
    ({"configs": {"baseline": {"variant": "baseline", "num_chart": 3}}}, "unknown fields \\['num_chart'\\]"),
    ({"configs": {"baseline": {"variant": "baseline", "match_params": "x"}}}, "match_params must name another"),
    ({"jobs": 0}, "'jobs' must be an integer >= 1"),
    ({"configs": {"baseline": {"variant": "wrongk"}}}, "variant"),
])
def test_bad_sweep_files(tmp_path: Path, patch: dict, message: str) -> None:
    path = _write(tmp_path, {**MICRO, **patch})
    with pytest.raises(ValueError, match=message):
        expand_runs(load_sweep(path))


def test_cli_bad_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli(["sweep", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"mkviz sweep: error: sweep file {tmp_path / 'missing.yaml'} not found"]


def test_welch_and_paired_known_answers() -> None:
    a, b = [0.81, 0.84, 0.86, 0.80], [0.78, 0.80, 0.79]
    w = sweep_report.welch(a, b)
    ref = stats.ttest_ind(a, b, equal_var=False)
    ci = ref.confidence_interval(0.95)
    assert w["p"] == pytest.approx(ref.pvalue, rel=1e-9)
    assert (w["lo"], w["hi"]) == (pytest.approx(ci.low, rel=1e-9), pytest.approx(ci.high, rel=1e-9))
    assert w["diff"] == pytest.approx(sum(a) / 4 - sum(b) / 3)
    # hand-computed: equal n and variances -> df = 2(n-1)
    w = sweep_report.welch([1.0, 2.0, 3.0], [2.0, 3.0, 4.0])
    assert w["df"] == pytest.approx(4.0) and w["diff"] == -1.0
    assert w["p"] == pytest.approx(2 * stats.t.sf(1.0 / math.sqrt(2 / 3), 4))
    # paired: constant per-seed shift of zero spread -> p 0; no shift -> undefined
    assert sweep_report.paired_p({0: 0.9, 1: 0.8, 2: 0.7}, {0: 0.8, 1: 0.7, 2: 0.6}) == 0.0
    assert math.isnan(sweep_report.paired_p({0: 0.5, 1: 0.6}, {0: 0.5, 1: 0.6}))
    p = sweep_report.paired_p({0: 0.9, 1: 0.8, 2: 0.75}, {0: 0.8, 1: 0.79, 2: 0.7})
    assert p == pytest.approx(stats.ttest_rel([0.9, 0.8, 0.75], [0.8, 0.79, 0.7]).pvalue)


def test_committed_reproduction_page_is_in_sync_with_its_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # the sweep file's paths are relative to the repository root
    sweep = load_sweep(REPRO)
    runs = expand_runs(sweep)
    # every run of the sweep file is finished, and made with exactly these settings
    n = len(sweep["seeds"]) * len(sweep["datasets"]) * len(sweep["configs"])
    assert len(sweep["seeds"]) >= 3 and len(runs) == n
    assert {run_state(sweep, r) for r in runs} == {"done"}
    assert sweep_report.check_page(sweep) == []
    records = sweep_report.load_results(sweep["results_dir"])
    assert len(records) == n

    # a changed number in one JSON makes the page stale
    shutil.copytree(sweep["results_dir"], tmp_path / "res")
    f = tmp_path / "res" / "shapes__vanillak-8__s0.json"
    rec = json.loads(f.read_text())
    rec["test_acc"] = 0.123
    f.write_text(json.dumps(rec))
    stale = sweep_report.check_page({**sweep, "results_dir": str(tmp_path / "res")})
    assert any("'results-shapes'" in s for s in stale) and any("'verdicts'" in s for s in stale)


STATED = {
    **MICRO, "seeds": [0, 1, 2],
    "configs": {"baseline": {"variant": "baseline"},
                "vanillak-2": {"variant": "vanillak", "num_charts": 2, "stage": 1},
                "overparam-key": {"variant": "baseline", "match_params": "vanillak-2", "match_by": "key",
                                  "seeds": [0, 1]},
                "kua-2": {"variant": "kua", "num_charts": 2, "ua_weight": 0.1, "seeds": [0], "stage": 2}},
    "report": {"primary": [["vanillak-2", "baseline"]], "controls": [["vanillak-2", "overparam-key"]]},
}


def test_a_sweep_with_stated_comparisons_reports_every_reading(tmp_path: Path) -> None:
    sweep = load_sweep(_write(tmp_path, {**STATED, "report": {**STATED["report"],
                                                               "specialisation_page": str(tmp_path / "charts.md")}}))
    runs = expand_runs(sweep)
    # stage 0 first (seed-major), then stage 1, then stage 2; configurations with their own seeds
    assert [r.run_id.split("__", 1)[1] for r in runs] == [
        "baseline__s0", "overparam-key__s0", "baseline__s1", "overparam-key__s1", "baseline__s2",
        "vanillak-2__s0", "vanillak-2__s1", "vanillak-2__s2", "kua-2__s0"]
    over = next(r for r in runs if r.config == "overparam-key").train
    assert over["key_hidden"] >= 1 and "match_by" not in over and "seeds" not in over
    records, failures = run_sweep(sweep, jobs=1)
    assert not failures and len(records) == 9
    kua = next(r for r in records if r["config"] == "kua-2")
    assert 0 <= kua["test_acc_one_hot"] <= 1 and set(kua["chart_init"]) >= {"chart_cosine", "membership_max"}
    sweep_report.write_report(sweep, plots=False)
    page = Path(sweep["page"]).read_text()
    table = page.split("<!-- mkviz:begin comparisons-shapes -->")[1].split("<!-- mkviz:end")[0]
    assert "| `vanillak-2` − `baseline` | primary | 3/3 |" in table
    assert "| `vanillak-2` − `overparam-key` | control | 3/2 |" in table
    assert "(0.25)" in table  # the exact paired permutation floor with 3 seeds: 2 / 2^3
    assert "Family: 4 comparisons (1 primary)" in table
    assert "training-step GFLOPs" in page and "<!-- mkviz:begin cost-shapes -->" in page
    # how flat the curves ended: the last epoch's validation gain, recomputed from the histories
    curves = page.split("<!-- mkviz:begin curves-shapes -->")[1].split("<!-- mkviz:end")[0]
    base = [r["history"] for r in records if r["config"] == "baseline"]
    gains = [100 * (h[-1]["val_acc"] - h[-2]["val_acc"]) for h in base]
    assert f"| `baseline` | 3 | {len(base[0])} |" in curves
    assert f"| {sum(gains) / 3:+.2f} [{min(gains):+.2f}, {max(gains):+.2f}] |" in curves
    assert "Over all 9 runs the last epoch added" in curves
    charts = Path(tmp_path / "charts.md").read_text()
    assert "| `vanillak-2` | vanillak | 2 | 1 | key | 3 |" in charts and "| `kua-2` | 1 |" in charts
    # KUA's chart usage: the entropy at the end, recomputed from the run's history
    usage = charts.split("<!-- mkviz:begin chart-usage -->")[1].split("<!-- mkviz:end")[0]
    kua_end = [r["history"][-1]["chart_usage_entropy"] for r in records if r["config"] == "kua-2"]
    assert f"| `kua-2` | 1 | " in usage and f"→ {kua_end[0]:.3f} ± –" in usage
    assert sweep_report.check_page(sweep) == []


def test_committed_fashion_mnist_pages_are_in_sync_with_their_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    for name in ("kernel_fmnist", "kua_usage_fmnist"):
        assert sweep_report.check_page(load_sweep(ROOT / "configs" / f"{name}.yaml")) == [], name
    sweep = load_sweep(ROOT / "configs" / "repro_fmnist.yaml")
    assert sweep_report.check_page(sweep) == []
    assert sweep["report"]["primary"] == [["vanillak-8", "baseline"], ["vanillak-8", "overparam-key"]]


def test_only_takes_comma_separated_globs():
    """`--only a,b` keeps the runs matching either glob, in the sweep's own order (stage, then seed-major)."""
    sweep = load_sweep("configs/repro_gpu.yaml")
    ids = [r.run_id for r in expand_runs(sweep, "fmnist__baseline__s*, fmnist__vanillak-8__s*")]
    assert ids[:4] == ["fmnist__baseline__s0", "fmnist__vanillak-8__s0", "fmnist__baseline__s1",
                       "fmnist__vanillak-8__s1"]
    assert len(ids) == 20 and len(expand_runs(sweep, "fmnist__baseline__s*")) == 10
