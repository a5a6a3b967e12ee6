"""A fine-tuned U-Net as a bioimage.io model package, and a Predictor back from one.

`export_package(checkpoint, outdir)` writes a folder that bioimage.io tools (bioimageio.core, napari, deepImageJ,
ilastik) and plain ONNX / TorchScript users can run, built with the spec's own classes (bioimageio.spec 0.5):

* `rdf.yaml`: input `raw` (batch, channel, y, x) as uint8, y and x of any size 64 + n*32 (the U-Net halves five
  times); preprocessing = this project's normalisation (`scale_linear` 1/255, then `fixed_zero_mean_unit_variance`
  with the checkpoint's norms); output `prediction`: sigmoid then `binarize` at the checkpoint's threshold2d
  (binary), softmax for several classes (the spec has no argmax). What this project needs to run the package
  again (norms, classes, encoder, thresholds) and where it came from (training data, encoder pretraining, the
  checkpoint's provenance) is in `config.cellemnet`, so loading needs no pickle.
* weights in three formats that give one output: `pytorch_state_dict` (an smp.Unet's plain state dict, the
  parent), `torchscript` (`torch.jit.trace`) and `onnx` (`torch.onnx.export`, the TorchScript-based exporter,
  `dynamo=False`: the dynamo exporter needs onnxscript, a further dependency, for nothing this model needs; y and
  x are dynamic). Each is checked against the eager model on the test input and a second size before anything is
  written (TOLERANCE).
* `test_input.npy` / `test_output.npy` from a synthetic EM image (`cellemnet.synthetic`), `cover.png` (the image
  and its prediction) and `README.md` (what it is, how it was made, how to validate it).

The package is validated with `bioimageio.core.test_model` (every weight format, on the CPU) and only then moved
into place (`cellemnet.io.atomic_dir`).

`predictor_from_package(path)` and `predictor_from_checkpoint(path)` give the same pair, (Predictor, metadata),
metadata = {threshold, thresholds ({"2d", "3d"}), num_classes, norms, encoder, source}: a checkpoint and its
package predict the same.
"""
from __future__ import annotations

import io
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from cellemnet.errors import InputError

CONFIG_KEY = "cellemnet"  # rdf.yaml's config.cellemnet: what this project reads back
INPUT_ID, OUTPUT_ID = "raw", "prediction"
MIN_SIZE = 64  # smallest y/x the package accepts; any size MIN_SIZE + n * DIVISOR works
TEST_SHAPE = (128, 160)  # the synthetic test image (not square, so y and x cannot be swapped unnoticed)
CHECK_SHAPE = (96, 224)  # a second size the exported formats are checked on (dynamic y/x)
TOLERANCE = 1e-4  # max |logit difference| of the TorchScript and ONNX weights from the eager model
ONNX_OPSET = 17
PAPER_DOI = "10.7554/eLife.65894"
FILES = {"weights": "weights.pt", "torchscript": "weights_torchscript.pt", "onnx": "weights.onnx",
         "test_input": "test_input.npy", "test_output": "test_output.npy", "cover": "cover.png",
         "documentation": "README.md"}


# ---------------------------------------------------------------------------------------------- loading
def _build_predictor(state: Mapping[str, Any], meta: Mapping[str, Any], in_channels: int, device, amp: bool,
                     source: str):
    from cellemnet.evaluation.model import build_unet_for_inference  # lazy: imports torch
    from cellemnet.evaluation.predict import Predictor  # lazy: imports torch
    from cellemnet.runtime import select_device  # lazy: imports torch

    model = build_unet_for_inference(meta["num_classes"], in_channels, meta["encoder"])
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise InputError(f"{source}: weights do not fit a {meta['encoder']} U-Net "
                         f"({str(exc).splitlines()[0]})") from None
    device = select_device(device) if isinstance(device, str) else device
    return Predictor(model, meta["norms"], in_channels, meta["num_classes"], device, amp=amp)


def checkpoint_metadata(ckpt: Mapping[str, Any], source: str | os.PathLike) -> dict[str, Any]:
    """The metadata of a fine-tuning checkpoint: {threshold, thresholds, num_classes, norms, encoder, source}."""
    from cellemnet.encoder import Norms
    from cellemnet.evaluation.infer import checkpoint_encoder

    state = ckpt["state_dict"]
    config = ckpt.get("config") or {}
    threshold2d = float(config.get("threshold2d", 0.5))
    return {
        "threshold": threshold2d,
        "thresholds": {"2d": threshold2d, "3d": float(config.get("threshold3d", threshold2d))},
        "num_classes": int(ckpt.get("num_classes", state["segmentation_head.0.bias"].shape[0])),
        "norms": Norms.parse(ckpt["norms"]).as_dict(),
        "encoder": checkpoint_encoder(ckpt, source),
        "source": str(source),
    }


def predictor_from_checkpoint(path: str | os.PathLike, device="auto", amp: bool = True):
    """(Predictor, metadata) from a fine-tuning checkpoint (what evaluation/finetune.py writes)."""
    from cellemnet.evaluation.train import load_training_checkpoint  # lazy: imports torch

    return predictor_from_loaded_checkpoint(load_training_checkpoint(path), path, device, amp)


def predictor_from_loaded_checkpoint(ckpt: Mapping[str, Any], path: str | os.PathLike, device="auto",
                                     amp: bool = True):
    """(Predictor, metadata) from a fine-tuning checkpoint already read (the inference scripts need its other keys
    too); `path` names it in messages and metadata."""
    meta = checkpoint_metadata(ckpt, path)
    in_channels = int(ckpt.get("in_channels", ckpt["state_dict"]["encoder.conv1.weight"].shape[1]))
    return _build_predictor(ckpt["state_dict"], meta, in_channels, device, amp, str(path)), meta


RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")  # what bioimage.io tools call the description file


def _rdf_in(folder: Path) -> Path | None:
    return next((folder / n for n in RDF_NAMES if (folder / n).is_file()), None)


def is_package(path: str | os.PathLike) -> bool:
    """A bioimage.io package: a folder holding rdf.yaml (or bioimageio.yaml), that file itself, or a .zip."""
    p = Path(path)
    return (p.is_dir() and _rdf_in(p) is not None) or p.name.endswith(RDF_NAMES) or \
        (p.is_file() and p.suffix == ".zip")


def load_package_description(path: str | os.PathLike):
    """The package's v0.5 model description (files hashed against rdf.yaml), or an InputError naming it."""
    from bioimageio.spec import InvalidDescr, load_model_description

    p = Path(path)
    source = (_rdf_in(p) or p / RDF_NAMES[0]) if p.is_dir() else p
    if not source.exists():
        raise InputError(f"{path}: no bioimage.io package here (no rdf.yaml)")
    try:
        descr = load_model_description(source, format_version="latest")
    except (ValueError, OSError) as exc:
        raise InputError(f"{path}: not a valid bioimage.io model package ({' '.join(str(exc).split())[:300]})") \
            from None
    if isinstance(descr, InvalidDescr):
        raise InputError(f"{path}: not a valid bioimage.io model package ({descr.validation_summary.status})")
    return descr


def package_config(descr, path: str | os.PathLike) -> dict[str, Any]:
    """rdf.yaml's config.cellemnet, or an InputError: a package this project did not write."""
    extra = descr.config.model_extra or {}
    config = extra.get(CONFIG_KEY)
    if not isinstance(config, Mapping) or descr.weights.pytorch_state_dict is None:
        raise InputError(f"{path}: a bioimage.io package without config.{CONFIG_KEY} or pytorch_state_dict "
                         "weights; only packages that evaluation/export_model.py writes can be loaded")
    return dict(config)


def predictor_from_package(path: str | os.PathLike, device="auto", amp: bool = True):
    """(Predictor, metadata) from a package export_package wrote (a folder, its rdf.yaml, or a .zip): the
    pytorch_state_dict weights (loaded with weights_only=True) and config.cellemnet."""
    import torch
    from bioimageio.spec.utils import get_reader

    descr = load_package_description(path)
    config = package_config(descr, path)
    threshold2d = float(config["threshold2d"])
    meta = {"threshold": threshold2d, "thresholds": {"2d": threshold2d,
                                                     "3d": float(config.get("threshold3d", threshold2d))},
            "num_classes": int(config["num_classes"]),
            "norms": {"mean": list(config["norms"]["mean"]), "std": list(config["norms"]["std"])},
            "encoder": str(config["encoder"]), "source": str(path)}
    data = get_reader(descr.weights.pytorch_state_dict.source).read()
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged or foreign weights file: one line naming the package
        raise InputError(f"{path}: unreadable pytorch_state_dict weights ({exc.__class__.__name__})") from None
    return _build_predictor(state, meta, int(config["in_channels"]), device, amp, str(path)), meta


# ---------------------------------------------------------------------------------------------- export
def valid_test_image(image: np.ndarray) -> np.ndarray:
    """`image` (2D uint8) cropped to sides the package accepts (MIN_SIZE + n * 32, the top-left part)."""
    from cellemnet.evaluation.predict import DIVISOR

    h, w = image.shape
    if min(h, w) < MIN_SIZE:
        raise InputError(f"the test image is {h}x{w}; the package needs at least {MIN_SIZE}x{MIN_SIZE}")
    return np.ascontiguousarray(image[: h - (h - MIN_SIZE) % DIVISOR, : w - (w - MIN_SIZE) % DIVISOR])


def _input_batch(image: np.ndarray, in_channels: int) -> np.ndarray:
    """(H, W) uint8 -> the package's raw input (1, C, H, W) uint8 (gray repeated for a 3-channel encoder)."""
    return np.repeat(image[None, None], in_channels, axis=1)


def check_formats(model, paths: Mapping[str, Path], inputs: list) -> dict[str, float]:
    """Max |logit difference| of the TorchScript and ONNX files from the eager model on each input (normalised
    (1, C, H, W) tensors); InputError when one is above TOLERANCE."""
    import onnxruntime
    import torch

    with warnings.catch_warnings():  # torch.jit's deprecation note: TorchScript is one of the formats asked for
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.load(str(paths["torchscript"]), map_location="cpu")
    session = onnxruntime.InferenceSession(str(paths["onnx"]), providers=["CPUExecutionProvider"])
    worst = {"torchscript": 0.0, "onnx": 0.0}
    with torch.inference_mode():
        for x in inputs:
            eager = model(x)
            worst["torchscript"] = max(worst["torchscript"], float((scripted(x) - eager).abs().max()))
            onnx_out = session.run(None, {INPUT_ID: x.numpy()})[0]
            worst["onnx"] = max(worst["onnx"], float(np.abs(onnx_out - eager.numpy()).max()))
    for fmt, diff in worst.items():
        if not diff <= TOLERANCE:
            raise InputError(f"{paths[fmt]}: the {fmt} weights differ from the PyTorch model by {diff:.2e} "
                             f"(more than {TOLERANCE:g}); not exported")
    return worst


def write_weights(model, example, folder: Path) -> dict[str, Path]:
    """The three weight files for one eager model (eval mode, CPU) traced on `example` (1, C, H, W)."""
    import torch

    paths = {fmt: folder / FILES[fmt] for fmt in ("weights", "torchscript", "onnx")}
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, paths["weights"])
    dynamic = {0: "batch", 2: "y", 3: "x"}
    with warnings.catch_warnings():  # the deprecation notes of the two exporters chosen on purpose (module doc)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        with torch.inference_mode():
            traced = torch.jit.trace(model, example, check_trace=False)  # checked below, at two sizes
        traced.save(str(paths["torchscript"]))
        torch.onnx.export(model, (example,), str(paths["onnx"]), dynamo=False, opset_version=ONNX_OPSET,
                          input_names=[INPUT_ID], output_names=[OUTPUT_ID],
                          dynamic_axes={INPUT_ID: dynamic, OUTPUT_ID: dynamic})
    return paths


def _cover(image: np.ndarray, labels: np.ndarray, path: Path) -> Path:
    """The image beside its predicted labels drawn on it (2:1, the cover format bioimage.io asks for)."""
    from cellemnet import figures

    gray = np.repeat((image.astype(np.float32) / 255.0)[..., None], 3, axis=-1)
    return figures.rgb_png(np.concatenate([gray, figures.overlay_rgb(image, None, labels)], axis=1), path)


def provenance(ckpt: Mapping[str, Any], checkpoint: str | os.PathLike) -> dict[str, Any]:
    """What the package records about its training: data, encoder pretraining, recipe, the checkpoint."""
    from cellemnet.evaluation.weights import checkpoint_label

    config = ckpt.get("config") or {}
    keys = ("experiment_name", "data_dir", "pretraining", "finetune_layer", "encoder", "iters", "epochs",
            "lr_policy", "lr", "bsz", "seed", "precise_bn")
    return {
        "training_data": config.get("data_dir"),
        "benchmark": config.get("experiment_name"),
        "pretraining": str(ckpt.get("pretraining", config.get("pretraining"))),
        "pretraining_label": checkpoint_label(str(ckpt.get("pretraining", config.get("pretraining", "")))),
        "training": {k: config[k] for k in keys if k in config},
        "checkpoint": str(Path(checkpoint).resolve()),
        "step": ckpt.get("step"),
        "mlflow_run_id": ckpt.get("run_id"),
    }


def _readme(name: str, meta: Mapping[str, Any], record: Mapping[str, Any], class_names: list[str],
            diffs: Mapping[str, float]) -> str:
    training = ", ".join(f"{k} {v}" for k, v in record["training"].items())
    post = (f"sigmoid, then binarize at {meta['threshold']}: 1 = {class_names[0]}" if meta["num_classes"] == 1
            else f"softmax over the classes {', '.join(class_names)} (take the argmax for labels)")
    return f"""# {name}

A U-Net ({meta['encoder']} encoder, segmentation_models_pytorch) fine-tuned on electron-microscopy images with
CellEMNet, exported by `evaluation/export_model.py`.

* Training data: `{record['training_data']}` (benchmark `{record['benchmark']}`).
* Encoder pretraining: `{record['pretraining']}`.
* Training: {training}.
* Checkpoint: `{record['checkpoint']}` (step {record['step']}, MLflow run {record['mlflow_run_id']}).

## Input and output

Input `{INPUT_ID}`: 8-bit gray EM images, (batch, channel, y, x), y and x of {MIN_SIZE} + n * 32 pixels (pad
others, e.g. by reflection, and crop the output back). Preprocessing: x / 255, then (x - {meta['norms']['mean']})
/ {meta['norms']['std']}. Output `{OUTPUT_ID}`: {post}.

## Validation

`bioimageio test rdf.yaml` (bioimageio.core) runs every weight format on `test_input.npy` and compares with
`test_output.npy`. At export the TorchScript and ONNX weights gave the PyTorch model's logits within
{diffs['torchscript']:.1e} and {diffs['onnx']:.1e} (limit {TOLERANCE:g}) at {TEST_SHAPE} and {CHECK_SHAPE}.
The model's own test-set IoU is what `evaluation/inference2d.py` reports for its checkpoint.

Please cite Conrad & Narayan, CEM500K (eLife 2021, doi:{PAPER_DOI}), whose methods CellEMNet implements.
"""


def model_description(folder: Path, meta: Mapping[str, Any], in_channels: int, class_names: list[str],
                      record: Mapping[str, Any], name: str, authors: list[str]):
    """The bioimage.io v0.5 model description of the files in `folder`."""
    import torch
    from bioimageio.spec.model import v0_5 as spec

    channel_names = ["gray"] if in_channels == 1 else ["gray_r", "gray_g", "gray_b"]
    norms = meta["norms"]
    if len(norms["mean"]) == 1:
        normalise = spec.FixedZeroMeanUnitVarianceDescr(kwargs=spec.FixedZeroMeanUnitVarianceKwargs(
            mean=norms["mean"][0], std=norms["std"][0]))
    else:
        normalise = spec.FixedZeroMeanUnitVarianceDescr(kwargs=spec.FixedZeroMeanUnitVarianceAlongAxisKwargs(
            mean=norms["mean"], std=norms["std"], axis=spec.AxisId("channel")))
    step = spec.ParameterizedSize(min=MIN_SIZE, step=32)
    raw = spec.InputTensorDescr(
        id=spec.TensorId(INPUT_ID),
        description="8-bit gray EM image",
        axes=[spec.BatchAxis(), spec.ChannelAxis(channel_names=[spec.Identifier(c) for c in channel_names]),
              spec.SpaceInputAxis(id=spec.AxisId("y"), size=step), spec.SpaceInputAxis(id=spec.AxisId("x"), size=step)],
        data=spec.IntervalOrRatioDataDescr(type="uint8", range=(0, 255)),
        test_tensor=spec.FileDescr(source=folder / FILES["test_input"]),
        preprocessing=[
            spec.EnsureDtypeDescr(kwargs=spec.EnsureDtypeKwargs(dtype="float32")),
            spec.ScaleLinearDescr(kwargs=spec.ScaleLinearKwargs(gain=1.0 / 255.0)),
            normalise,
            spec.EnsureDtypeDescr(kwargs=spec.EnsureDtypeKwargs(dtype="float32")),
        ],
    )
    if meta["num_classes"] == 1:
        binarize = spec.BinarizeDescr(kwargs=spec.BinarizeKwargs(threshold=meta["threshold"]))
        postprocessing = [spec.SigmoidDescr(), binarize,
                          spec.EnsureDtypeDescr(kwargs=spec.EnsureDtypeKwargs(dtype="float32"))]
        description = f"1 where the model sees {class_names[0]} (sigmoid > {meta['threshold']}), else 0"
    else:
        postprocessing = [spec.SoftmaxDescr(kwargs=spec.SoftmaxKwargs(axis=spec.AxisId("channel")))]
        description = "class probabilities (softmax over the channel axis)"
    prediction = spec.OutputTensorDescr(
        id=spec.TensorId(OUTPUT_ID),
        description=description,
        axes=[spec.BatchAxis(), spec.ChannelAxis(channel_names=[spec.Identifier(c) for c in class_names]),
              spec.SpaceOutputAxis(id=spec.AxisId("y"), size=spec.SizeReference(
                  tensor_id=spec.TensorId(INPUT_ID), axis_id=spec.AxisId("y"))),
              spec.SpaceOutputAxis(id=spec.AxisId("x"), size=spec.SizeReference(
                  tensor_id=spec.TensorId(INPUT_ID), axis_id=spec.AxisId("x")))],
        test_tensor=spec.FileDescr(source=folder / FILES["test_output"]),
        postprocessing=postprocessing,
    )
    torch_version = spec.Version(torch.__version__.split("+")[0])
    architecture = spec.ArchitectureFromLibraryDescr(
        import_from="segmentation_models_pytorch", callable=spec.Identifier("Unet"),
        kwargs={"encoder_name": meta["encoder"], "encoder_weights": None, "in_channels": in_channels,
                "classes": meta["num_classes"]})
    weights = spec.WeightsDescr(
        pytorch_state_dict=spec.PytorchStateDictWeightsDescr(
            source=folder / FILES["weights"], architecture=architecture, pytorch_version=torch_version),
        torchscript=spec.TorchscriptWeightsDescr(
            source=folder / FILES["torchscript"], pytorch_version=torch_version, parent="pytorch_state_dict",
            comment="torch.jit.trace of the PyTorch model"),
        onnx=spec.OnnxWeightsDescr(
            source=folder / FILES["onnx"], opset_version=ONNX_OPSET, parent="pytorch_state_dict",
            comment="torch.onnx.export (dynamo=False), dynamic batch, y and x"),
    )
    config = {CONFIG_KEY: {
        "num_classes": meta["num_classes"], "class_names": class_names, "in_channels": in_channels,
        "encoder": meta["encoder"], "norms": norms, "threshold2d": meta["thresholds"]["2d"],
        "threshold3d": meta["thresholds"]["3d"], **record,
    }}
    return spec.ModelDescr(
        name=name,
        description=f"EM segmentation ({', '.join(class_names)}): a {meta['encoder']} U-Net fine-tuned on "
                    f"{record['benchmark']} from {record['pretraining_label']} (CellEMNet)",
        authors=[spec.Author(name=a) for a in authors],
        cite=[spec.CiteEntry(text="Conrad & Narayan, CEM500K, a large-scale heterogeneous unlabeled cellular "
                                  "electron microscopy image dataset for deep learning. eLife 10, e65894 (2021)",
                             doi=spec.Doi(PAPER_DOI))],
        license=spec.LicenseId("BSD-3-Clause"),
        tags=["electron-microscopy", "segmentation", "2d", "unet", "pytorch", "cellemnet", *class_names],
        documentation=spec.FileDescr(source=folder / FILES["documentation"]),
        covers=[spec.FileDescr(source=folder / FILES["cover"])],
        inputs=[raw],
        outputs=[prediction],
        weights=weights,
        config=spec.Config(**config),
    )


def test_package(source, weight_format: str | None = None):
    """bioimageio.core's model test on the CPU (every weight format unless one is named); the summary, or an
    InputError with its failures."""
    from bioimageio.core import test_model

    with warnings.catch_warnings():  # torch.jit's deprecation note, as bioimageio.core loads the TorchScript weights
        warnings.simplefilter("ignore", FutureWarning)
        summary = test_model(source, weight_format=weight_format, devices=["cpu"])
    if summary.status != "passed":
        failed = [d.name + (f": {d.errors[0].msg}" if d.errors else "") for d in summary.details
                  if d.status == "failed"]
        raise InputError(f"{source}: the bioimage.io model test failed ({'; '.join(failed)[:500]})")
    return summary


def export_package(checkpoint: str | os.PathLike, outdir: str | os.PathLike, *, test_image: np.ndarray | None = None,
                   name: str | None = None, authors: list[str] | None = None, validate: bool = True,
                   zip_path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Write the bioimage.io package of a fine-tuning checkpoint into `outdir` (replaced whole, atomically; an
    existing outdir must be empty or an earlier package).

    test_image: a 2D uint8 image for the test tensors and the cover (default: a synthetic EM image); it is cropped
    to an accepted size. validate: run bioimageio.core's model test before the package is moved into place.
    zip_path: also write the package as one .zip (what bioimage.io uploads take). Returns {outdir, rdf, zip,
    differences (max |logit difference| per converted format), validated, metadata}."""
    from cellemnet.evaluation.predict import pad_to_divisor
    from cellemnet.evaluation.train import load_training_checkpoint
    from cellemnet.io import atomic_dir, check_writable
    from cellemnet.synthetic import make_image

    outdir = Path(outdir)
    ckpt = load_training_checkpoint(checkpoint)
    if outdir.exists() and not (outdir.is_dir() and (_rdf_in(outdir) or not any(outdir.iterdir()))):
        # the folder is replaced whole: only an earlier package (or an empty folder) may be
        raise InputError(f"{outdir}: exists and is not a model package; give a new or empty folder")
    check_writable(outdir.parent, "model package")
    predictor, meta = predictor_from_loaded_checkpoint(ckpt, checkpoint, device="cpu", amp=False)
    model = predictor.model.eval()
    config = ckpt.get("config") or {}
    class_names = [str(c) for c in config.get("class_names") or [f"class{i}" for i in range(meta["num_classes"])]]
    if len(class_names) != meta["num_classes"]:
        class_names = [f"class{i}" for i in range(meta["num_classes"])]
    record = provenance(ckpt, checkpoint)
    name = name or f"CellEMNet {meta['encoder']} U-Net {record['benchmark'] or 'EM'}"
    name = "".join(c if c.isalnum() or c in "_+- ()" else "-" for c in name)
    image = valid_test_image(test_image if test_image is not None else make_image(TEST_SHAPE, seed=0)[0])
    raw = _input_batch(image, predictor.in_channels)
    probs = predictor.predict_batch(image[None])  # the project's own pipeline: normalise, pad, forward, activate
    if meta["num_classes"] == 1:
        expected = (probs > meta["threshold"]).astype(np.float32)
        labels = expected[0, 0]
    else:
        expected = probs.astype(np.float32)
        labels = probs[0].argmax(0)
    del ckpt
    with tempfile.TemporaryDirectory(prefix=".cellemnet-package-", dir=outdir.parent) as tmp:
        build = Path(tmp)
        np.save(build / FILES["test_input"], raw)
        np.save(build / FILES["test_output"], expected)
        _cover(image, labels, build / FILES["cover"])
        example = predictor._prepare(image[None])
        check = pad_to_divisor(predictor._prepare(make_image(CHECK_SHAPE, seed=1)[0][None]))
        paths = write_weights(model, example, build)
        diffs = check_formats(model, paths, [example, check])
        (build / FILES["documentation"]).write_text(_readme(name, meta, record, class_names, diffs))
        descr = model_description(build, meta, predictor.in_channels, class_names, record, name,
                                  authors or ["CellEMNet"])
        if validate:
            test_package(descr)
        from bioimageio.spec import save_bioimageio_package, save_bioimageio_package_as_folder

        with atomic_dir(outdir) as staging:
            save_bioimageio_package_as_folder(descr, output_path=staging)
        written_zip = None
        if zip_path is not None:
            written_zip = Path(save_bioimageio_package(descr, output_path=Path(zip_path)))
    return {"outdir": outdir, "rdf": outdir / "rdf.yaml", "zip": written_zip, "differences": diffs,
            "validated": validate, "metadata": meta}


def describe_export(result: Mapping[str, Any]) -> str:
    """The one line the command prints."""
    diffs = ", ".join(f"{k} {v:.1e}" for k, v in result["differences"].items())
    zipped = f" and {result['zip']}" if result["zip"] else ""
    tested = "bioimageio.core model test passed" if result["validated"] else "not tested (--no-test)"
    return f"wrote {result['rdf']}{zipped}: {tested}; max logit difference from PyTorch: {diffs}"


__all__ = ["check_formats", "checkpoint_metadata", "describe_export", "export_package", "is_package",
           "load_package_description", "model_description", "predictor_from_checkpoint", "predictor_from_package",
           "provenance", "test_package", "valid_test_image"]
