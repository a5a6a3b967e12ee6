"""Real labelled EM from ../shared/data: ISBI 2012 membranes as a 2D benchmark, the ISBI stack as a 3D test
volume, and the CEM500K example crops (odd sizes, 0/255 masks) as a 2D test set."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from eval_core_helpers import tiny_config

from cellemnet.evaluation.config import load_eval_config
from cellemnet.evaluation.examples import layout_isbi2012
from cellemnet.evaluation.infer import run_inference2d, run_inference3d
from cellemnet.evaluation.train import finetune

pytestmark = [pytest.mark.shared_data, pytest.mark.slow]


@pytest.fixture(scope="module")
def isbi_model(shared_data, tmp_path_factory):
    base = tmp_path_factory.mktemp("isbi")
    bench = layout_isbi2012(shared_data / "isbi2012", base / "isbi", n_test=2, crop=96, n_train=4, volume_depth=6)
    cfg_path = tiny_config(base / "isbi.yaml", bench, iters=2, test_dir2d=str(bench / "test"),
                           test_dir3d=str(bench / "test3d"), class_names=["membrane"], experiment_name="isbi")
    cfg = load_eval_config(cfg_path, stage="train")
    out = finetune(cfg, progress=False)
    return base, bench, cfg_path, out["checkpoint"]


def test_isbi_layout_is_a_benchmark(isbi_model):
    from cellemnet.io import read_image

    _, bench, _, _ = isbi_model
    names = sorted(p.name for p in (bench / "train" / "images").iterdir())
    assert names == ["slice00.png", "slice01.png", "slice02.png", "slice03.png"]
    mask = read_image(bench / "train" / "masks" / "slice00.png")
    assert set(np.unique(mask)) == {0, 255} and 0.05 < (mask > 0).mean() < 0.5  # membranes are the minority


def test_isbi_2d_and_3d_inference(isbi_model):
    import SimpleITK as sitk

    base, bench, cfg_path, state = isbi_model
    cfg = load_eval_config(cfg_path, [f"save_dir2d={base / 'p2d'}"], stage="infer2d")
    score = run_inference2d(cfg, state, progress=False)
    assert 0.0 < score <= 1.0  # membranes are everywhere: an untrained net still overlaps some
    cfg3 = load_eval_config(cfg_path, [f"save_dir3d={base / 'p3d'}", "mode3d=orthoplane", "batch3d=64"],
                            stage="infer3d")
    score3 = run_inference3d(cfg3, state, progress=False)
    assert 0.0 < score3 <= 1.0
    out = sitk.ReadImage(str(base / "p3d" / "isbi.nrrd"))
    assert out.GetSize() == (96, 96, 6) and out.GetSpacing() == (4.0, 4.0, 50.0)


def test_cem_example_crops_as_test_set(isbi_model, shared_data, tmp_path):
    """Odd-sized real crops (130x224, 138x224) with 0/255 masks, scored per image; tiling exercised."""
    base, _, cfg_path, state = isbi_model
    test = tmp_path / "cem"
    shutil.copytree(shared_data / "cem-examples" / "correlation", test)
    cfg = load_eval_config(cfg_path, [f"test_dir2d={test}", f"save_dir2d={tmp_path / 'out'}", "tile_size2d=128",
                                      "tile_overlap2d=32"], stage="infer2d")
    score = run_inference2d(cfg, state, progress=False)
    rows = (tmp_path / "out" / "iou.csv").read_text().splitlines()[1:]
    assert len(rows) == 8 and 0.0 <= score <= 1.0
    from cellemnet.io import read_image

    assert read_image(tmp_path / "out" / "nuclei.png").shape == (130, 224)
