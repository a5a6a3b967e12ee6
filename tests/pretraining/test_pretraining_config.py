"""Config schemas: paper defaults, validation before anything runs."""
from __future__ import annotations

import pytest

from cellemnet.constants import EM_MEAN, EM_STD
from cellemnet.encoder import Norms
from cellemnet.errors import ConfigError
from cellemnet.pretraining.config import load_pretraining_config


def test_shipped_configs_hold_the_paper_settings(root, patch_root):
    moco = load_pretraining_config(root / "pretraining/configs/mocov2.yaml", "mocov2", [f"data_path={patch_root}"])
    assert (moco["moco_k"], moco["moco_m"], moco["moco_t"], moco["moco_dim"]) == (65536, 0.999, 0.2, 128)
    assert (moco["lr"], moco["batch_size"], moco["weight_decay"], moco["schedule"], moco["epochs"]) == (
        0.015, 128, 1e-4, [120, 160], 200)
    assert moco["arch"] == "resnet50" and moco["mlp"] and not moco["cos"]
    assert Norms.parse(moco["norms"]).pair() == [pytest.approx(EM_MEAN), pytest.approx(EM_STD)]
    swav = load_pretraining_config(root / "pretraining/configs/swav.yaml", "swav", [f"data_path={patch_root}"])
    assert (swav["nmb_prototypes"], swav["epsilon"], swav["sinkhorn_iterations"]) == (3000, 0.05, 3)
    assert (swav["nmb_crops"], swav["size_crops"]) == ([2, 6], [224, 96])
    assert (swav["min_scale_crops"], swav["max_scale_crops"]) == ([0.14, 0.05], [1.0, 0.14])
    assert (swav["queue_length"], swav["epoch_queue_starts"], swav["freeze_prototypes_niters"]) == (3840, 15, 5005)
    assert (swav["lr"], swav["final_lr"], swav["trust_coefficient"]) == (0.6, 0.0006, 0.001)


def test_unknown_key_wrong_type_and_missing_path_are_clear_errors(root, patch_root, tmp_path):
    cfg = root / "pretraining/configs/mocov2.yaml"
    with pytest.raises(ConfigError, match="unknown key 'moco_q'"):
        load_pretraining_config(cfg, "mocov2", [f"data_path={patch_root}", "moco_q=3"])
    with pytest.raises(ConfigError, match="'batch_size' must be int"):
        load_pretraining_config(cfg, "mocov2", [f"data_path={patch_root}", "batch_size=big"])
    with pytest.raises(ConfigError, match="data_path.*not found"):
        load_pretraining_config(cfg, "mocov2", [f"data_path={tmp_path / 'nowhere'}"])
    with pytest.raises(ConfigError, match="resume"):
        load_pretraining_config(cfg, "mocov2", [f"data_path={patch_root}", f"resume={tmp_path / 'x.pth'}"])
    with pytest.raises(ConfigError, match="size_crops"):
        load_pretraining_config(root / "pretraining/configs/swav.yaml", "swav",
                                [f"data_path={patch_root}", "size_crops=[224]"])


def test_cli_reports_config_errors_in_one_line(root, patch_root):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, str(root / "pretraining/train_mocov2.py"),
                          str(root / "pretraining/configs/mocov2.yaml"), f"data_path={patch_root}", "epochs=zero"],
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.strip().startswith("error:") and "epochs" in out.stderr and "Traceback" not in out.stderr
