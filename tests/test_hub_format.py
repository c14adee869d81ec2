"""timm's registry and Hub format: `mkviz_<arch>` entrypoints, and checkpoint folders that
`timm.create_model("local-dir:PATH", pretrained=True)` loads (plain timm for baselines and folded models,
after `import mkviz` for manifold keys) with the outputs of `load_checkpoint`; older folders still load."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

import mkviz
from mkviz.apps.shipped import checkpoint_dir
from mkviz.core.timm_models import BASE_MODULES
from mkviz.training import CONFIG_FILE, list_checkpoints, load_checkpoint, read_json, train
from mkviz.training.timm_hub import HUB_KEYS, migrate_checkpoint, save_hub

from test_train import small_cfg

pytestmark = pytest.mark.usefixtures("one_thread")

PLAIN_TIMM = """
import sys, torch, timm
model = timm.create_model("local-dir:" + sys.argv[1], pretrained=True).eval()
assert "mkviz" not in sys.modules, "plain timm must not import mkviz"
torch.manual_seed(0)
x = torch.randn(2, *timm.data.resolve_model_data_config(model)["input_size"])
torch.save(model(x).detach(), sys.argv[2])
"""


def probe(model: torch.nn.Module) -> torch.Tensor:
    torch.manual_seed(0)
    x = torch.randn(2, *timm.data.resolve_model_data_config(model)["input_size"])
    with torch.no_grad():
        return model.eval()(x)


def plain_timm_output(folder: Path, tmp_path: Path) -> torch.Tensor:
    """The outputs of `folder` loaded by timm in a fresh process that never imports mkviz."""
    out = tmp_path / "out.pt"
    run = subprocess.run([sys.executable, "-c", PLAIN_TIMM, str(folder), str(out)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-1500:]
    return torch.load(out, weights_only=True)


def test_registry_lists_and_builds_mkviz_architectures():
    names = timm.list_models("mkviz*")
    assert len(names) == len(timm.list_models(module=list(BASE_MODULES))) > 200
    assert {"mkviz_vit_tiny_patch16_224", "mkviz_deit_tiny_patch16_224", "mkviz_swin_tiny_patch4_window7_224"} \
        <= set(names)
    model = timm.create_model("mkviz_vit_tiny_patch16_224", pretrained=False, variant="kua", num_charts=3,
                              img_size=32, patch_size=8, depth=2, num_classes=4)
    keys = [m.key for _, m in mkviz.manifold_modules(model)]
    assert len(keys) == 2 and all(k.variant == "kua" and k.num_charts == 3 for k in keys)
    assert model.pretrained_cfg["architecture"] == "mkviz_vit_tiny_patch16_224" and model(
        torch.randn(1, 3, 32, 32)).shape == (1, 4)


@pytest.mark.slow  # a fresh interpreter importing timm
def test_shipped_baseline_loads_with_plain_timm(tmp_path):
    folder = checkpoint_dir("fashion-mnist", "baseline")
    config = read_json(folder / CONFIG_FILE)
    assert config["architecture"] == "vit_tiny_patch16_224" and config["num_classes"] == 10
    assert config["num_features"] == 64 and config["pretrained_cfg"]["mean"] == [0.286] * 3
    assert config["model_args"]["img_size"] == [28, 28] and config["label_names"][0] == "T-shirt/top"
    ref, _ = load_checkpoint(folder)
    assert (plain_timm_output(folder, tmp_path) - probe(ref)).abs().max().item() <= 1e-6


@pytest.mark.slow  # a fresh interpreter importing timm
def test_folded_checkpoint_loads_with_plain_timm(tmp_path):
    model, config = load_checkpoint(checkpoint_dir("fashion-mnist", "vanillak-8"))
    folded = mkviz.fold(model)
    save_hub(folded, tmp_path / "folded", config["model_spec"], {"class_names": config["class_names"]})
    assert read_json(tmp_path / "folded" / CONFIG_FILE)["architecture"] == "vit_tiny_patch16_224"
    assert (plain_timm_output(tmp_path / "folded", tmp_path) - probe(model)).abs().max().item() <= 1e-6
    with pytest.raises(ValueError, match="not empty"):
        save_hub(folded, tmp_path / "folded", config["model_spec"])


@pytest.mark.parametrize("dataset,name", [("fashion-mnist", n) for n in ("vanillak-8", "simplek-8", "spatialk-8",
                                                                          "kua-8")] + [("shapes", "kua-8")])
def test_manifold_checkpoint_loads_with_timm_after_import_mkviz(dataset, name):
    folder = checkpoint_dir(dataset, name)
    ref, config = load_checkpoint(folder)
    model = timm.create_model(f"local-dir:{folder}", pretrained=True)
    assert model.pretrained_cfg["architecture"] == "mkviz_vit_tiny_patch16_224"
    assert type(model.blocks[0].attn) is type(ref.blocks[0].attn)
    assert model.blocks[0].attn.key.num_charts == config["model_spec"]["num_charts"] == 8
    assert timm.data.resolve_model_data_config(model) == timm.data.resolve_model_data_config(ref)
    assert (probe(model) - probe(ref)).abs().max().item() <= 1e-6


def test_older_folders_load_and_migrate(tmp_path):
    folder = tmp_path / "old"
    shutil.copytree(checkpoint_dir("shapes", "spatialk-8"), folder)
    config = read_json(folder / CONFIG_FILE)
    old = {k: v for k, v in config.items() if k not in HUB_KEYS}
    (folder / CONFIG_FILE).write_text(json.dumps(old))
    ref, _ = load_checkpoint(folder)  # the older reader
    with pytest.raises(KeyError, match="architecture"):
        timm.create_model(f"local-dir:{folder}", pretrained=True)
    assert migrate_checkpoint(folder) is True and migrate_checkpoint(folder) is False
    migrated = read_json(folder / CONFIG_FILE)
    assert {k: migrated[k] for k in old} == old and migrated["pretrained_cfg"]["input_size"] == [3, 32, 32]
    model = timm.create_model(f"local-dir:{folder}", pretrained=True)
    assert (probe(model) - probe(ref)).abs().max().item() <= 1e-6


def test_training_checkpoints_are_written_in_the_hub_format(tmp_path):
    out = tmp_path / "run"
    train(small_cfg(out, variant="kua", num_charts=4, ua_weight=0.1, save_every_steps=1))
    for folder in [*list_checkpoints(out), out / "final"]:
        written = read_json(folder / CONFIG_FILE)
        assert written["architecture"] == "mkviz_" + written["model_spec"]["model"]
        assert written["model_args"]["variant"] == "kua" and written["model_args"]["ua_weight"] == 0.1
        model, _ = load_checkpoint(folder)
        loaded = timm.create_model(f"local-dir:{folder}", pretrained=True)
        assert (probe(loaded) - probe(model)).abs().max().item() <= 1e-6
