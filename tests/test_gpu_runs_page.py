"""docs/gpu_runs.md: its tables are the ones `mkviz bench table` and `mkviz bench targets` make from the JSON
files the GPU runs left (the prose numbers are checked by tests/test_page_numbers.py)."""
from __future__ import annotations

import json
import re

import pytest

from mkviz.apps.bench import format_markdown, format_targets
from mkviz.apps.bench_profile import format_profile_summary

import gpu_runs_data as gpu


def blocks() -> dict[str, str]:
    text = (gpu.ROOT / gpu.PAGE).read_text()
    return {m[1]: m[2] for m in re.finditer(r"<!-- mkviz:begin (\S+) -->\n(.*?)\n<!-- mkviz:end \1 -->", text, re.S)}


@pytest.mark.parametrize("label", list(gpu.BENCH))
def test_bench_tables_match_their_json(label):
    path = gpu.BENCH[label]
    records = json.loads((gpu.ROOT / path).read_text())
    assert blocks()[path.removeprefix("docs/")] == format_markdown(records), \
        f"regenerate with: python -m mkviz.bench table {path}"
    assert {r["device"] for r in records} == {"cuda"} and all(r["machine"]["gpu"] for r in records)


def test_profile_table_matches_its_json():
    records = json.loads((gpu.ROOT / gpu.PROFILE).read_text())
    assert blocks()[gpu.PROFILE.removeprefix("docs/")] == format_profile_summary(records)
    assert [r["variant"] for r in records] == ["baseline", "vanillak", "simplek", "spatialk", "kua"]
    assert {r["device"] for r in records} == {"cuda"} and {r["batch_size"] for r in records} == {128}


def test_targets_table_matches_the_json():
    runs = {label: json.loads((gpu.ROOT / path).read_text()) for label, path in gpu.BENCH.items()}
    assert blocks()["targets"] == format_targets(runs)


def test_format_targets_marks_misses():
    rec = lambda v, t, f, e: {"variant": v, "num_charts": 8, "train_throughput_ratio": t,
                               "folded_infer_throughput_ratio": f, "efficiency": e}
    runs = {"a": [rec("vanillak", 0.95, 1.0, 1.2), rec("simplek", 0.5, 0.96, 0.9), rec("spatialk", 0.9, 0.97, 0.8),
                  rec("kua", 0.6, None, 0.95)]}
    lines = format_targets(runs).splitlines()
    assert lines[2] == "| training throughput ≥ 0.9 | vanillak / simplek / spatialk | 0.95 / **0.50** / 0.90 |"
    assert lines[3] == "| folded inference ≥ 0.97 | vanillak / simplek / spatialk | 1.00 / **0.96** / 0.97 |"
    assert lines[4] == "| efficiency ≥ 0.85 | vanillak / simplek / spatialk / kua | 1.20 / 0.90 / **0.80** / 0.95 |"
