"""Test-set evaluation: 2D images, 3D volumes, and the All-Mitochondria mix, with IoU, saved predictions,
a per-image/per-volume IoU CSV, overlay PNGs, and `Test_Set_IoU` logged to the training run.

Each run also writes `result.json` beside its predictions (RESULT_NAME; `read_result` reads it back): what was
scored, with what, the metrics and how long it took. The demo, the Snakefile and benchmarks read that file, never
the scripts' stdout.
"""
from __future__ import annotations

import csv
import io as _io
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from cellemnet import figures
from cellemnet.encoder import arch_from_state_dict
from cellemnet.errors import InputError
from cellemnet.evaluation.config import default_eval_classes
from cellemnet.evaluation.data import find_pairs, read_gray8, test_labels
from cellemnet.evaluation.metrics import instance_match, ious, mean_of
from cellemnet.io import atomic_path, atomic_write_text, read_image, read_volume, to_uint8, write_image, write_volume
from cellemnet.tracking import start_run


@dataclass
class TestResult:
    """Scores of one test set: rows of the CSV and the overall mean."""

    name: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    classes: list[int] = field(default_factory=list)
    overlays: list[Path] = field(default_factory=list)
    save_dir: Path | None = None
    csv_path: Path | None = None

    @property
    def mean_iou(self) -> float:
        """Mean over every (item, class) entry with a ground truth; NaN only when nothing had one."""
        values = [r[f"iou_class{c}"] for r in self.rows for c in self.classes if r.get(f"iou_class{c}") is not None]
        return mean_of(values)


# ---------------------------------------------------------------------------------------------- model loading
def load_predictor(state_path: str | Path, config: Mapping[str, Any]):
    """A Predictor from a fine-tuning checkpoint (class count, channels and norms come from the checkpoint; the
    one builder is cellemnet.evaluation.package's), and the checkpoint."""
    from cellemnet.evaluation.package import predictor_from_loaded_checkpoint
    from cellemnet.evaluation.train import load_training_checkpoint  # lazy: imports torch

    ckpt = load_training_checkpoint(state_path)
    predictor, _ = predictor_from_loaded_checkpoint(ckpt, state_path, config["device"], amp=config["amp"])
    return predictor, ckpt


def checkpoint_encoder(ckpt: Mapping[str, Any], state_path: str | Path) -> str:
    """The U-Net encoder of a fine-tuning checkpoint: its "encoder" key, else what the encoder weights show."""
    if ckpt.get("encoder"):
        return str(ckpt["encoder"])
    try:
        return arch_from_state_dict(ckpt["state_dict"], prefix="encoder.")
    except InputError as exc:
        raise InputError(f"{state_path}: {exc}") from None


def default_save_dir(state_path: str | Path, kind: str) -> Path:
    p = Path(state_path)
    return p.with_name(f"{p.stem}_predictions{kind}")


# ---------------------------------------------------------------------------------------------- outputs
def _overlay(image: np.ndarray, pred: np.ndarray, truth: np.ndarray | None) -> np.ndarray:
    """The saved overlay: the gray image, the prediction tinted magenta, the ground truth outlined in green."""
    return figures.overlay_rgb(image, truth, pred, blend=0.4, outline=True)


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]], classes: Sequence[int]) -> None:
    cols = ["name"] + [f"iou_class{c}" for c in classes] + ["mean_iou"]
    buf = _io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in cols})
    atomic_write_text(path, buf.getvalue())


def _row(name: str, scores: Mapping[int, float] | None) -> dict[str, Any]:
    row: dict[str, Any] = {"name": name}
    if scores:
        row.update({f"iou_class{c}": v for c, v in scores.items()})
        row["mean_iou"] = mean_of(list(scores.values()))
    return row


# ---------------------------------------------------------------------------------------------- 2D
def evaluate_2d(predictor, test_dir: str | Path, save_dir: str | Path, threshold: float = 0.5,
                eval_classes: Sequence[int] | None = None, instance_match2d: bool = False,
                tile_size: int = 0, tile_overlap: int = 0, save_overlays: int = 4, name: str = "2d",
                progress: bool = True) -> TestResult:
    """Predict every image of test_dir/images, score against test_dir/masks, save label images + CSV."""
    from tqdm import tqdm

    from cellemnet.evaluation.predict import labels_from_probabilities  # lazy: imports torch

    classes = list(eval_classes) if eval_classes else default_eval_classes(predictor.num_classes)
    pairs = find_pairs(test_dir, require_masks=False)
    save_dir = Path(save_dir)
    result = TestResult(name=name, classes=classes, save_dir=save_dir)
    for i, pair in enumerate(tqdm(pairs, desc=f"inference {name}", unit="image", disable=not progress)):
        image = read_gray8(pair.image)
        probs = predictor.predict_image(image, tile_size=tile_size, overlap=tile_overlap)
        pred = labels_from_probabilities(probs, threshold)
        truth = None
        if pair.mask is not None:
            truth = test_labels(read_image(pair.mask), predictor.num_classes)
        if truth is not None and truth.shape != pred.shape:
            raise InputError(f"{pair.mask}: mask shape {truth.shape} != image shape {pred.shape}")
        if instance_match2d and truth is not None:
            pred = instance_match(pred, truth)
        write_image(save_dir / pair.name, pred)
        result.rows.append(_row(pair.name, ious(pred, truth, classes) if truth is not None else None))
        if i < save_overlays:
            out = save_dir / "overlays" / f"{Path(pair.name).stem}.png"
            figures.rgb_png(_overlay(image, pred, truth), out)
            result.overlays.append(out)
    result.csv_path = save_dir / "iou.csv"
    write_csv(result.csv_path, result.rows, classes)
    return result


# ---------------------------------------------------------------------------------------------- 3D
def read_volume_with_info(path: Path):
    """(uint8 zyx array, SimpleITK reference image or None, spacing zyx)."""
    name = path.name.lower()
    if name.endswith((".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")):  # formats that carry origin/direction
        import SimpleITK as sitk

        ref = sitk.ReadImage(str(path))
        arr = sitk.GetArrayFromImage(ref)
        if arr.ndim != 3:
            raise InputError(f"{path}: expected a 3D volume, got shape {arr.shape}")
        return to_uint8(arr, name=str(path)), ref, tuple(reversed(ref.GetSpacing()))
    arr, spacing = read_volume(path)
    return to_uint8(np.asarray(arr), name=str(path)), None, tuple(spacing)


def read_label_volume(path: Path) -> np.ndarray:
    arr, _ = read_volume(path)
    return np.asarray(arr)


def write_label_volume(path: Path, labels: np.ndarray, ref, spacing) -> None:
    """Save predictions with the input's spacing, origin and direction (SimpleITK CopyInformation)."""
    import SimpleITK as sitk

    if ref is None:
        write_volume(path, labels, spacing=spacing)
        return
    img = sitk.GetImageFromArray(labels.astype(np.uint8))
    img.CopyInformation(ref)
    with atomic_path(path) as tmp:
        sitk.WriteImage(img, str(tmp), useCompression=True)


def evaluate_3d(predictor, test_dir: str | Path, save_dir: str | Path, mode: str = "stack",
                threshold: float = 0.5, eval_classes: Sequence[int] | None = None, mask_prediction: bool = False,
                batch: int = 16, save_overlays: int = 4, name: str = "3d", progress: bool = True) -> TestResult:
    """Predict each volume of test_dir/images (stack or orthoplane), score per volume, save labels + CSV."""
    from cellemnet.evaluation.predict import labels_from_probabilities  # lazy: imports torch

    classes = list(eval_classes) if eval_classes else default_eval_classes(predictor.num_classes)
    pairs = find_pairs(test_dir, require_masks=False, volumes=True)
    save_dir = Path(save_dir)
    result = TestResult(name=name, classes=classes, save_dir=save_dir)
    for i, pair in enumerate(pairs):
        volume, ref, spacing = read_volume_with_info(pair.image)
        probs = predictor.predict_volume(volume, mode=mode, batch=batch, progress=progress,
                                         desc=f"{name} {pair.name} ({mode})")
        pred = labels_from_probabilities(probs, threshold)
        truth = None
        if pair.mask is not None:
            truth = read_label_volume(pair.mask)
            if truth.shape != pred.shape:
                raise InputError(f"{pair.mask}: mask shape {truth.shape} != volume shape {pred.shape}")
            truth = test_labels(truth, predictor.num_classes)
            if mask_prediction:
                pred = np.where(truth == 0, 0, pred).astype(np.uint8)
        write_label_volume(save_dir / pair.name, pred, ref, spacing)
        result.rows.append(_row(pair.name, ious(pred, truth, classes) if truth is not None else None))
        if i < save_overlays:
            z = volume.shape[0] // 2
            out = save_dir / "overlays" / f"{pair.name.split('.')[0]}_z{z}.png"
            figures.rgb_png(_overlay(volume[z], pred[z], None if truth is None else truth[z]), out)
            result.overlays.append(out)
    result.csv_path = save_dir / "iou.csv"
    write_csv(result.csv_path, result.rows, classes)
    return result


# ---------------------------------------------------------------------------------------------- tracking
def log_test_result(ckpt: Mapping[str, Any], config: Mapping[str, Any], results: Sequence[TestResult],
                    metrics: Mapping[str, float]) -> str | None:
    """Log test metrics and artifacts to the checkpoint's training run (a new run when it has none)."""
    if not config["logging"]:
        return None
    run_id = ckpt.get("run_id") or None
    try:
        tracker = start_run(config["experiment_name"], run_name="inference", run_id=run_id,
                            tracking_dir=config["tracking_dir"])
    except Exception as exc:  # the training run lives in another store (or was deleted): keep the result anyway
        if run_id is None:
            raise
        print(f"warning: training run {run_id} not found in this MLflow store ({exc.__class__.__name__}); "
              "logging the test metrics to a new run")
        tracker = start_run(config["experiment_name"], run_name="inference", tracking_dir=config["tracking_dir"],
                            tags={"training_run_id": run_id})
    with tracker:
        tracker.log_metrics(metrics, step=0)
        for r in results:
            sub = f"test/{r.name}"
            if r.csv_path is not None:
                tracker.log_artifact(r.csv_path, artifact_path=sub)
            for o in r.overlays:
                tracker.log_artifact(o, artifact_path=f"{sub}/overlays")
        return tracker.run_id


# ---------------------------------------------------------------------------------------------- scripts' cores
RESULT_NAME = "result.json"
RESULT_VERSION = 1


def write_result(save_dir: str | Path, kind: str, state_path: str | Path, ckpt: Mapping[str, Any],
                 config: Mapping[str, Any], results: Sequence[TestResult], metrics: Mapping[str, float],
                 started: float, run_id: str | None) -> Path:
    """`save_dir/result.json` (atomic): kind (2d, 3d, mixed), the checkpoint and what it was trained from, the
    test folders, the metrics (NaN as null), per-set item counts, seconds, the MLflow run. Returns its path."""
    def number(v: float) -> float | None:
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)

    record = {
        "version": RESULT_VERSION, "kind": kind, "checkpoint": str(Path(state_path).resolve()),
        "experiment_name": config["experiment_name"], "pretraining": ckpt.get("pretraining"),
        "encoder": ckpt.get("encoder"), "finetune_layer": (ckpt.get("config") or {}).get("finetune_layer"),
        "seed": (ckpt.get("config") or {}).get("seed"), "step": ckpt.get("step"),
        "metrics": {k: number(v) for k, v in metrics.items()},
        "test_sets": [{"name": r.name, "items": len(r.rows), "classes": list(r.classes),
                       "mean_iou": number(r.mean_iou), "predictions": str(r.save_dir),
                       "csv": str(r.csv_path) if r.csv_path else None} for r in results],
        "seconds": round(time.time() - started, 3), "mlflow_run_id": run_id,
    }
    path = Path(save_dir) / RESULT_NAME
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")
    return path


def read_result(path: str | Path) -> dict[str, Any]:
    """A result.json written by write_result, as a dict (metrics NaN again where null); InputError naming the
    file otherwise."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except OSError as exc:
        raise InputError(f"{path}: cannot read the inference result ({exc.strerror or exc})") from None
    except json.JSONDecodeError:
        raise InputError(f"{path}: not an inference result (not JSON)") from None
    if not isinstance(record, dict) or "Test_Set_IoU" not in (record.get("metrics") or {}):
        raise InputError(f"{path}: not an inference result (no metrics.Test_Set_IoU)")
    record["metrics"] = {k: (math.nan if v is None else float(v)) for k, v in record["metrics"].items()}
    return record


def _scalar(value, index: int | None = None):
    return value[index] if isinstance(value, list) and index is not None else value


def run_inference2d(config: Mapping[str, Any], state_path: str | Path, progress: bool = True) -> float:
    started = time.time()
    predictor, ckpt = load_predictor(state_path, config)
    save_dir = config["save_dir2d"] or default_save_dir(state_path, "2d")
    result = evaluate_2d(
        predictor, config["test_dir2d"], save_dir, threshold=config["threshold2d"],
        eval_classes=config["eval_classes2d"], instance_match2d=bool(_scalar(config["instance_match2d"], 0)),
        tile_size=config["tile_size2d"], tile_overlap=config["tile_overlap2d"],
        save_overlays=config["save_overlays"], name=config["experiment_name"], progress=progress,
    )
    score = result.mean_iou
    _print_result(result)
    run_id = log_test_result(ckpt, config, [result], {"Test_Set_IoU": score})
    write_result(save_dir, "2d", state_path, ckpt, config, [result], {"Test_Set_IoU": score}, started, run_id)
    return score


def run_inference3d(config: Mapping[str, Any], state_path: str | Path, progress: bool = True) -> float:
    started = time.time()
    predictor, ckpt = load_predictor(state_path, config)
    save_dir = config["save_dir3d"] or default_save_dir(state_path, "3d")
    result = evaluate_3d(
        predictor, config["test_dir3d"], save_dir, mode=_scalar(config["mode3d"], 0),
        threshold=config["threshold3d"], eval_classes=config["eval_classes3d"],
        mask_prediction=bool(_scalar(config["mask_prediction3d"], 0)), batch=config["batch3d"],
        save_overlays=config["save_overlays"], name=config["experiment_name"], progress=progress,
    )
    score = result.mean_iou
    _print_result(result)
    run_id = log_test_result(ckpt, config, [result], {"Test_Set_IoU": score})
    write_result(save_dir, "3d", state_path, ckpt, config, [result], {"Test_Set_IoU": score}, started, run_id)
    return score


def run_inference_mixed(config: Mapping[str, Any], state_path: str | Path, progress: bool = True) -> dict[str, float]:
    """All-Mitochondria: each sub-benchmark scored with its own settings, one model load, one process.

    Returns {f"{name}_iou": score, ..., "Test_Set_IoU": unweighted mean over sub-benchmarks}.
    """
    started = time.time()
    predictor, ckpt = load_predictor(state_path, config)
    test_root = Path(config["test_dir"])
    base_save = Path(config["save_dir2d"] or default_save_dir(state_path, "_mixed"))
    results, metrics = [], {}
    for i, name in enumerate(config["benchmark_names"]):
        dim = config["benchmark_dimensions"][i]
        sub_dir = test_root / dim / name
        if not sub_dir.is_dir():
            raise InputError(f"{sub_dir}: sub-benchmark '{name}' not found under test_dir")
        save_dir = Path(config["save_dirs"][i]) if config["save_dirs"] else base_save / name
        classes = [config["eval_classes"][i]]
        threshold = float(config["thresholds"][i])
        if dim == "2d":
            r = evaluate_2d(predictor, sub_dir, save_dir, threshold=threshold, eval_classes=classes,
                            instance_match2d=bool(_scalar(config["instance_match2d"], i)),
                            tile_size=config["tile_size2d"], tile_overlap=config["tile_overlap2d"],
                            save_overlays=config["save_overlays"], name=name, progress=progress)
        else:
            r = evaluate_3d(predictor, sub_dir, save_dir, mode=_scalar(config["mode3d"], i), threshold=threshold,
                            eval_classes=classes, mask_prediction=bool(_scalar(config["mask_prediction3d"], i)),
                            batch=config["batch3d"], save_overlays=config["save_overlays"], name=name,
                            progress=progress)
        _print_result(r)
        results.append(r)
        metrics[f"{name}_iou"] = r.mean_iou
    metrics["Test_Set_IoU"] = mean_of([metrics[f"{n}_iou"] for n in config["benchmark_names"]])
    run_id = log_test_result(ckpt, config, results, metrics)
    write_result(base_save, "mixed", state_path, ckpt, config, results, metrics, started, run_id)
    return metrics


def _print_result(result: TestResult) -> None:
    for c in result.classes:
        vals = [r[f"iou_class{c}"] for r in result.rows if r.get(f"iou_class{c}") is not None]
        if vals:
            print(f"{result.name}: class {c} IoU {mean_of(vals):.4f} over {len(vals)} item(s)")
    print(f"{result.name}: mean IoU {result.mean_iou:.4f}; predictions and {result.csv_path.name} in {result.save_dir}")
