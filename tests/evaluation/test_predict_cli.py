"""`predict`: 2D folders to TIFFs, volumes block by block to OME-Zarr / NRRD with the voxel size kept, block-wise
orthoplane equal to the evaluation stage's in-memory result, resume after SIGKILL, thin planes, one-line errors."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cellemnet.evaluation import predict as predict_module
from cellemnet.evaluation.blockwise import DONE_FOLDER, WORK_SUFFIX, load_model, plan_blocks, predict
from cellemnet.io import open_volume, read_image, write_image, write_volume
from cellemnet.synthetic import make_volume

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "evaluation" / "predict.py"


def save_checkpoint(path: Path, classes: int = 1, threshold: float = 0.5, head_scale: float = 1.0) -> Path:
    """A fine-tuning checkpoint of an untrained ResNet-18 U-Net (the keys evaluation/finetune.py writes)."""
    import segmentation_models_pytorch as smp

    torch.manual_seed(0)
    state = smp.Unet("resnet18", encoder_weights=None, in_channels=1, classes=classes).state_dict()
    state["segmentation_head.0.weight"] = state["segmentation_head.0.weight"] * head_scale
    torch.save({"state_dict": state, "scheduler": {}, "optimizer": {}, "norms": {"mean": [0.5], "std": [0.25]},
                "in_channels": 1, "num_classes": classes, "encoder": "resnet18",
                "config": {"threshold2d": threshold, "threshold3d": threshold}}, path)
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("model") / "unet.pth")


@pytest.fixture(scope="module")
def loaded(checkpoint):
    return load_model(checkpoint, "cpu")


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1)


def test_blocks_cover_the_volume_once_and_halos_stay_inside():
    shape = (10, 70, 33)
    count = np.zeros(shape, np.int32)
    blocks = plan_blocks(shape, (4, 32, 32), (2, 8, 8))
    for b in blocks:
        count[b.core] += 1
        assert all(0 <= o.start <= c.start and c.stop <= o.stop <= n for c, o, n in zip(b.core, b.outer, shape))
    assert (count == 1).all() and len(blocks) == 3 * 3 * 2 and len({b.name for b in blocks}) == len(blocks)


def test_2d_folder_becomes_tiled_tiffs(tmp_path, loaded):
    predictor, _ = loaded
    rng = np.random.default_rng(0)
    images = {"a.png": rng.integers(0, 256, (100, 130), dtype=np.uint8),
              "b.tif": rng.integers(0, 256, (70, 64), dtype=np.uint8)}
    for name, image in images.items():
        write_image(tmp_path / "in" / name, image)
    record = predict("unused", tmp_path / "in", tmp_path / "out", tile=64, overlap=16, loaded=loaded, progress=False)
    for name, image in images.items():
        out = read_image(tmp_path / "out" / f"{Path(name).stem}.tif")
        expected = predictor.predict_image(image, tile_size=64, overlap=16)[0]
        assert out.shape == image.shape and out.dtype == np.uint8
        assert np.abs(out.astype(np.float32) / 255 - expected).max() <= 0.5 / 255 + 1e-6  # uint8 rounding only
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["dims"] == "2d" and len(result["input"]["images"]) == 2 and result["memory_mb"]["peak"] > 0
    assert record["how"]["tile"] == 64
    predict("unused", tmp_path / "in", tmp_path / "labels", kind="labels", tile=64, overlap=16, loaded=loaded,
            progress=False)
    assert set(np.unique(read_image(tmp_path / "labels" / "a.tif"))) <= {0, 1}


def test_volume_becomes_ome_zarr_and_nrrd_with_voxel_size(tmp_path, loaded):
    import zarr

    volume, _ = make_volume((6, 64, 48), seed=3)
    write_volume(tmp_path / "v.h5:/raw", volume, spacing=(30.0, 4.0, 4.0))
    kwargs = dict(mode="stack", block=(3, 32, 48), halo=(0, 16, 16), loaded=loaded, progress=False)
    record = predict("unused", f"{tmp_path / 'v.h5'}:/raw", tmp_path / "out", **kwargs)
    store = tmp_path / "out" / "v_raw.ome.zarr"
    assert record["output"] == str(store) and record["complete"] and record["blocks"]["total"] == 2 * 2 * 1
    with open_volume(store) as reader:
        assert reader.shape == volume.shape and reader.spacing == (30.0, 4.0, 4.0) and reader.dtype == np.uint8
        ome = reader.read()
    meta = dict(zarr.open_group(str(store), mode="r").attrs)["multiscales"][0]
    assert [a["name"] for a in meta["axes"]] == ["z", "y", "x"]
    assert not (tmp_path / "out" / f"v_raw.ome.zarr{WORK_SUFFIX}").exists()  # the work store became the output
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["input"]["spacing"] == [30.0, 4.0, 4.0] and result["blocks_per_second"] > 0
    assert result["how"]["halo"] == [0, 16, 16] and result["memory_mb"]["after_model"] > 0

    write_volume(tmp_path / "v.zarr", volume, spacing=(30.0, 4.0, 4.0))
    predict("unused", tmp_path / "v.zarr", tmp_path / "v_pred.nrrd", **kwargs)
    with open_volume(tmp_path / "v_pred.nrrd") as reader:
        assert reader.spacing == (30.0, 4.0, 4.0)
        np.testing.assert_array_equal(reader.read(), ome)  # same blocks whatever the input or output format

    predict("unused", tmp_path / "v.zarr", tmp_path / "labels.ome.zarr", kind="labels", **kwargs)
    predict("unused", tmp_path / "v.zarr", tmp_path / "instances.ome.zarr", kind="instances", **kwargs)
    with open_volume(tmp_path / "labels.ome.zarr") as a, open_volume(tmp_path / "instances.ome.zarr") as b:
        labels, instances = a.read(), b.read()
    assert set(np.unique(labels)) <= {0, 1} and instances.dtype == np.uint32
    np.testing.assert_array_equal(instances > 0, labels > 0)  # components cover exactly the foreground


def test_blockwise_orthoplane_equals_inference3d(tmp_path, checkpoint, monkeypatch):
    """Several blocks (split along z, y and x) whose halos reach the whole volume: block-wise orthoplane gives
    what the evaluation stage (evaluate_3d, inference3d.py's core) computes on the volume in memory."""
    from cellemnet.evaluation.infer import evaluate_3d, read_label_volume

    monkeypatch.setattr(predict_module, "MIN_PLANE_SIDE", 16)  # a small volume keeps all three planes
    volume, _ = make_volume((16, 32, 32), seed=5)
    write_volume(tmp_path / "test" / "images" / "v.nrrd", volume, spacing=(2.0, 1.0, 1.0))
    predictor, metadata = loaded = load_model(checkpoint, "cpu")
    probs = predictor.predict_volume(volume, "orthoplane", batch=16)[0]
    threshold = float(np.median(probs))  # a threshold that splits the volume, for a meaningful Dice
    metadata["thresholds"] = {"3d": threshold}
    evaluate_3d(predictor, tmp_path / "test", tmp_path / "eval", mode="orthoplane", threshold=threshold,
                progress=False, save_overlays=0)
    reference = read_label_volume(tmp_path / "eval" / "v.nrrd")
    kwargs = dict(mode="orthoplane", block=(8, 16, 32), halo=(16, 32, 32), batch=16, loaded=loaded, progress=False)
    record = predict("unused", tmp_path / "test" / "images" / "v.nrrd", tmp_path / "p.ome.zarr", **kwargs)
    assert record["blocks"]["total"] == 4 and record["how"]["planes"] == [0, 1, 2]
    with open_volume(tmp_path / "p.ome.zarr") as reader:
        blockwise = reader.read().astype(np.float32) / 255
    assert np.abs(blockwise - probs).mean() <= 2 / 255 and np.abs(blockwise - probs).max() <= 1 / 255
    predict("unused", tmp_path / "test" / "images" / "v.nrrd", tmp_path / "l.ome.zarr", kind="labels", **kwargs)
    with open_volume(tmp_path / "l.ome.zarr") as reader:
        labels = reader.read()
    assert 0.2 < reference.mean() < 0.8 and dice(labels > 0, reference > 0) >= 0.99


def test_thin_plane_orientations_are_left_out_with_a_note(capsys, tmp_path):
    class Pointwise(torch.nn.Module):
        def forward(self, x):
            return 4.0 * x[:, :1] - 1.0

    p = predict_module.Predictor(Pointwise(), {"mean": [0.5], "std": [0.25]}, 1, 1, torch.device("cpu"))
    volume = np.random.default_rng(0).integers(0, 256, (5, 40, 40), dtype=np.uint8)
    ortho = p.predict_volume(volume, "orthoplane")
    out = capsys.readouterr().out
    assert "xz planes left out" in out and "yz planes left out" in out and "5x40" in out
    np.testing.assert_array_equal(ortho, p.predict_volume(volume, "stack"))
    axes, notes = predict_module.plane_axes((200, 150, 120), "orthoplane")
    assert axes == [0, 1, 2] and notes == []
    assert predict_module.plane_axes((120, 100, 300), "orthoplane")[0] == [0, 1]  # xz 120x300 kept, yz 120x100 not

    from cellemnet.evaluation.infer import evaluate_3d  # inference3d.py's core says so too

    write_volume(tmp_path / "t" / "images" / "v.nrrd", volume)
    evaluate_3d(p, tmp_path / "t", tmp_path / "out", mode="orthoplane", progress=False, save_overlays=0)
    assert "xz planes left out" in capsys.readouterr().out


def _run_script(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(SCRIPT), *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_sigkill_then_rerun_gives_the_uninterrupted_output(tmp_path, checkpoint):
    volume, _ = make_volume((12, 128, 128), seed=7)
    write_volume(tmp_path / "v.zarr", volume)
    settings = ["mode=stack", "block=[1,64,64]", "halo=[0,32,32]", "progress=false"]
    full = _run_script(str(checkpoint), str(tmp_path / "v.zarr"), str(tmp_path / "full.ome.zarr"), *settings)
    assert full.wait(timeout=300) == 0, full.stderr.read()

    target = tmp_path / "killed.ome.zarr"
    work = target.with_name(target.name + WORK_SUFFIX)
    killed = _run_script(str(checkpoint), str(tmp_path / "v.zarr"), str(target), *settings)
    deadline = time.time() + 240
    while time.time() < deadline and killed.poll() is None and len(os.listdir(work / DONE_FOLDER)
                                                                     if (work / DONE_FOLDER).is_dir() else []) < 2:
        time.sleep(0.02)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    done_before = len(os.listdir(work / DONE_FOLDER))
    assert 2 <= done_before < 12 * 2 * 2 and not target.exists()  # a killed run never looks finished

    again = _run_script(str(checkpoint), str(tmp_path / "v.zarr"), str(target), *settings)
    assert again.wait(timeout=300) == 0, again.stderr.read()
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["blocks"]["skipped_done"] == done_before and result["complete"] and not work.exists()
    with open_volume(target) as a, open_volume(tmp_path / "full.ome.zarr") as b:
        np.testing.assert_array_equal(a.read(), b.read())


def _error_line(capsys, *argv: str) -> str:
    from cellemnet.cli.predict import main

    assert main(list(argv)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_bad_model_input_or_settings_are_one_line_errors(tmp_path, capsys, checkpoint):
    volume = tmp_path / "v.h5"
    write_volume(f"{volume}:/raw", np.zeros((4, 32, 32), np.uint8))
    assert str(tmp_path / "nope.pth") in _error_line(capsys, str(tmp_path / "nope.pth"), str(volume), "o.ome.zarr")
    (tmp_path / "notes.txt").write_text("not a model")
    assert "notes.txt" in _error_line(capsys, str(tmp_path / "notes.txt"), str(volume), "o.ome.zarr")
    (tmp_path / "empty").mkdir()
    assert "rdf.yaml" in _error_line(capsys, str(tmp_path / "empty"), str(volume), "o.ome.zarr")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "rdf.yaml").write_text("type: model\n")
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    assert "junk.zip" in _error_line(capsys, str(tmp_path / "junk.zip"), str(volume), "o.ome.zarr")
    assert "pkg" in _error_line(capsys, str(tmp_path / "pkg"), str(volume), "o.ome.zarr")
    assert "missing.h5" in _error_line(capsys, str(checkpoint), str(tmp_path / "missing.h5"), "o.ome.zarr")
    assert "v.h5" in _error_line(capsys, str(checkpoint), f"{volume}:/nokey", "o.ome.zarr")
    assert "no images" in _error_line(capsys, str(checkpoint), str(tmp_path / "empty"), str(tmp_path / "o"))
    assert "o.png" in _error_line(capsys, str(checkpoint), str(volume), str(tmp_path / "o.png"))
    assert "'mode'" in _error_line(capsys, str(checkpoint), str(volume), "o.ome.zarr", "mode=xz")
    assert "'block'" in _error_line(capsys, str(checkpoint), str(volume), "o.ome.zarr", "block=[0,64,64]")


@pytest.mark.slow
def test_torchrun_splits_blocks_and_gives_the_single_process_output(tmp_path, checkpoint):
    volume, _ = make_volume((4, 128, 64), seed=9)
    write_volume(tmp_path / "v.zarr", volume)
    settings = ["mode=stack", "block=[1,64,64]", "halo=[0,16,16]", "progress=false", "device=cpu"]
    single = _run_script(str(checkpoint), str(tmp_path / "v.zarr"), str(tmp_path / "one.ome.zarr"), *settings)
    assert single.wait(timeout=300) == 0, single.stderr.read()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", str(SCRIPT)]
    done = subprocess.run([*torchrun, str(checkpoint), str(tmp_path / "v.zarr"), str(tmp_path / "two.ome.zarr"),
                           *settings], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["how"]["processes"] == 2 and result["blocks"]["predicted"] == 8 and result["complete"]
    assert done.stdout.count("written in") == 1  # rank 0 reports for both processes
    with open_volume(tmp_path / "one.ome.zarr") as a, open_volume(tmp_path / "two.ome.zarr") as b:
        np.testing.assert_array_equal(a.read(), b.read())
