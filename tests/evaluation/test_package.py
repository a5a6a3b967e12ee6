"""The bioimage.io model export (evaluation/export_model.py, cellemnet.evaluation.package) of a tiny fine-tuned
ResNet-18 U-Net: bioimageio.core's model test, the converted weights against PyTorch, and predict on the package
against predict on the checkpoint."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import yaml
from eval_core_helpers import tiny_benchmark, tiny_config

from cellemnet.errors import InputError
from cellemnet.evaluation import package
from cellemnet.evaluation.config import load_eval_config
from cellemnet.evaluation.train import finetune
from cellemnet.synthetic import make_image, make_volume

pytestmark = pytest.mark.slow  # a fine-tune, an export and bioimageio.core's test of it: about a minute on 2 cores


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A 2-step ResNet-18 checkpoint and its package, written by the command (and as a .zip); the model test runs
    once, below, on the written package (--no-test: the export would run the same test on the same files)."""
    from cellemnet.cli.export_model import main

    base = tmp_path_factory.mktemp("export")
    data = tiny_benchmark(base / "bench")
    cfg = tiny_config(base / "cfg.yaml", data, encoder="resnet18", precise_bn=0, logging=False, threshold2d=0.4)
    checkpoint = finetune(load_eval_config(cfg, stage="train"), progress=False)["checkpoint"]
    code = main([checkpoint, str(base / "pkg"), "--zip", str(base / "pkg.zip"), "--no-test"])
    assert code == 0
    return checkpoint, base / "pkg", base / "pkg.zip"


def test_package_passes_the_bioimageio_model_test_on_the_cpu(exported):
    _, folder, _ = exported
    assert sorted(p.name for p in folder.iterdir()) == sorted(["rdf.yaml", *package.FILES.values()])
    summary = package.test_package(folder / "rdf.yaml")  # the written package, as a user opens it
    assert summary.status == "passed"
    tested = " ".join(d.name for d in summary.details)
    for fmt in ("pytorch_state_dict", "torchscript", "onnx"):
        assert fmt in tested, tested


def test_torchscript_and_onnx_reproduce_pytorch_within_1e4(exported):
    """Independent of the export's own check: a new image size (dynamic y/x) and a batch of two."""
    import onnxruntime

    checkpoint, folder, _ = exported
    predictor, _ = package.predictor_from_checkpoint(checkpoint, device="cpu")
    images = np.stack([make_image((64, 96), seed=s)[0] for s in (5, 6)])
    x = predictor._prepare(images)
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        eager = predictor.model(x).numpy()
        scripted = torch.jit.load(str(folder / package.FILES["torchscript"]))(x).numpy()
    session = onnxruntime.InferenceSession(str(folder / package.FILES["onnx"]), providers=["CPUExecutionProvider"])
    onnx_out = session.run(None, {package.INPUT_ID: x.numpy()})[0]
    assert eager.shape == (2, 1, 64, 96)
    assert np.abs(scripted - eager).max() <= 1e-4
    assert np.abs(onnx_out - eager).max() <= 1e-4


IMAGE = make_image((100, 130), seed=3)[0]  # sides that are not multiples of 32
VOLUME = make_volume((4, 40, 50), seed=2)[0]


@pytest.fixture(scope="module")
def checkpoint_prediction(exported):
    predictor, meta = package.predictor_from_checkpoint(exported[0], device="cpu")
    return meta, predictor.predict_image(IMAGE), predictor.predict_volume(VOLUME, "orthoplane")


@pytest.mark.parametrize("kind", ["folder", "rdf", "zip"])
def test_predict_on_the_package_equals_predict_on_the_checkpoint(exported, checkpoint_prediction, kind):
    checkpoint, folder, zipped = exported
    source = {"folder": folder, "rdf": folder / "rdf.yaml", "zip": zipped}[kind]
    assert package.is_package(source) and not package.is_package(checkpoint)
    meta_ckpt, image_probs, volume_probs = checkpoint_prediction
    from_pkg, meta_pkg = package.predictor_from_package(source, device="cpu")
    assert set(meta_pkg) == {"threshold", "thresholds", "num_classes", "norms", "encoder", "source"}
    assert {**meta_pkg, "source": None} == {**meta_ckpt, "source": None}
    assert meta_pkg["threshold"] == 0.4 and meta_pkg["encoder"] == "resnet18" and meta_pkg["source"] == str(source)
    np.testing.assert_array_equal(from_pkg.predict_image(IMAGE), image_probs)
    np.testing.assert_array_equal(from_pkg.predict_volume(VOLUME, "orthoplane"), volume_probs)


@pytest.mark.parametrize("output", ["probabilities", "labels"])
def test_the_predict_command_gives_the_same_output_for_the_package_and_the_checkpoint(exported, tmp_path, output):
    """evaluation/predict.py MODEL INPUT OUTPUT with MODEL the checkpoint, then its package: identical files
    (the threshold of labels comes from the model in both)."""
    from cellemnet.cli.predict import main
    from cellemnet.io import open_volume, write_volume

    checkpoint, folder, _ = exported
    volume = tmp_path / "v.h5"
    write_volume(f"{volume}:/raw", make_volume((6, 72, 80), seed=4)[0])
    outs = {}
    for name, model in (("checkpoint", checkpoint), ("package", folder)):
        out = tmp_path / f"{name}.ome.zarr"
        args = [f"output={output}", "mode=stack", "device=cpu", "progress=false"]
        assert main([str(model), f"{volume}:/raw", str(out), *args]) == 0
        with open_volume(out) as reader:
            outs[name] = np.asarray(reader[:])
    assert outs["checkpoint"].shape == (6, 72, 80)
    assert outs["checkpoint"].any()
    np.testing.assert_array_equal(outs["package"], outs["checkpoint"])


def test_rdf_holds_the_normalisation_threshold_and_provenance(exported):
    checkpoint, folder, _ = exported
    rdf = yaml.safe_load((folder / "rdf.yaml").read_text())
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    (raw,), (out,) = rdf["inputs"], rdf["outputs"]
    assert raw["data"]["type"] == "uint8"
    assert [a.get("size") for a in raw["axes"][2:]] == [{"min": 64, "step": 32}] * 2
    steps = {p["id"]: p.get("kwargs") for p in raw["preprocessing"]}
    assert steps["scale_linear"] == {"gain": pytest.approx(1 / 255)}
    assert steps["fixed_zero_mean_unit_variance"] == {"mean": pytest.approx(ckpt["norms"]["mean"][0]),
                                                      "std": pytest.approx(ckpt["norms"]["std"][0])}
    assert [p["id"] for p in out["postprocessing"]][:2] == ["sigmoid", "binarize"]
    assert out["postprocessing"][1]["kwargs"] == {"threshold": 0.4}
    config = rdf["config"]["cellemnet"]
    assert config["threshold2d"] == 0.4 and config["class_names"] == ["mito"] and config["in_channels"] == 1
    assert config["training_data"] == ckpt["config"]["data_dir"] and config["pretraining"] == "random_init"
    assert config["checkpoint"].endswith(".pth") and config["step"] == 2
    assert set(rdf["weights"]) == {"pytorch_state_dict", "torchscript", "onnx"}
    assert rdf["weights"]["pytorch_state_dict"]["architecture"]["kwargs"]["encoder_name"] == "resnet18"
    # the test tensors are the project's own prediction of the synthetic test image, thresholded
    test_in, test_out = np.load(folder / "test_input.npy"), np.load(folder / "test_output.npy")
    assert test_in.dtype == np.uint8 and test_in.shape == (1, 1, *package.TEST_SHAPE)
    predictor, _ = package.predictor_from_checkpoint(checkpoint, device="cpu")
    np.testing.assert_array_equal(test_out, (predictor.predict_batch(test_in[:, 0]) > 0.4).astype(np.float32))


def test_not_a_package_is_one_line_error(tmp_path, exported):
    checkpoint, folder, _ = exported
    with pytest.raises(InputError, match="no rdf.yaml"):
        package.predictor_from_package(tmp_path / "nothing")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "rdf.yaml").write_text((folder / "rdf.yaml").read_text())  # the files it names are missing
    with pytest.raises(InputError, match="not a valid bioimage.io model package"):
        package.predictor_from_package(broken)
    with pytest.raises(InputError, match="fine-tuning checkpoint"):
        package.export_package(folder / "weights.pt", tmp_path / "out", validate=False)
    assert not (tmp_path / "out").exists()
    mine = tmp_path / "my_data"
    (mine / "keep.txt").parent.mkdir()
    (mine / "keep.txt").write_text("not a package")
    with pytest.raises(InputError, match="exists and is not a model package"):
        package.export_package(checkpoint, mine, validate=False)  # never replaced whole
    assert (mine / "keep.txt").read_text() == "not a package"
    with pytest.raises(InputError, match="at least 64x64"):
        package.valid_test_image(np.zeros((40, 200), np.uint8))
    assert package.valid_test_image(np.zeros((130, 100), np.uint8)).shape == (128, 96)


def test_three_classes_and_three_channels_export_softmax_and_per_channel_norms(tmp_path):
    """A hand-made checkpoint (random ResNet-18 U-Net, 3 input channels as ImageNet encoders have, 3 classes):
    softmax postprocessing and per-channel normalisation pass the model test, and the package predicts as the
    checkpoint."""
    from cellemnet.evaluation.model import build_unet_for_inference

    torch.manual_seed(0)
    unet = build_unet_for_inference(3, 3, "resnet18")
    norms = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    checkpoint = tmp_path / "three.pth"
    torch.save({"state_dict": unet.state_dict(), "scheduler": {}, "norms": norms, "num_classes": 3,
                "in_channels": 3, "encoder": "resnet18", "pretraining": "imagenet_supervised", "step": 1,
                "config": {"experiment_name": "organelles", "class_names": ["background", "mito", "er"],
                           "threshold2d": 0.5, "data_dir": "organelles/"}}, checkpoint)
    result = package.export_package(checkpoint, tmp_path / "pkg", test_image=make_image((100, 140), seed=4)[0])
    assert result["validated"] and max(result["differences"].values()) <= 1e-4
    rdf = yaml.safe_load((tmp_path / "pkg" / "rdf.yaml").read_text())
    (raw,), (out,) = rdf["inputs"], rdf["outputs"]
    normalise = next(p for p in raw["preprocessing"] if p["id"] == "fixed_zero_mean_unit_variance")
    assert normalise["kwargs"] == {"mean": norms["mean"], "std": norms["std"], "axis": "channel"}
    assert [p["id"] for p in out["postprocessing"]][:1] == ["softmax"]  # the spec appends an ensure_dtype
    assert out["axes"][1]["channel_names"] == ["background", "mito", "er"]
    assert np.load(tmp_path / "pkg" / "test_input.npy").shape == (1, 3, 96, 128)  # cropped to 64 + n * 32
    from_pkg, meta = package.predictor_from_package(tmp_path / "pkg", device="cpu")
    from_ckpt, _ = package.predictor_from_checkpoint(checkpoint, device="cpu")
    assert meta["num_classes"] == 3 and meta["norms"] == norms
    np.testing.assert_array_equal(from_pkg.predict_image(IMAGE), from_ckpt.predict_image(IMAGE))
