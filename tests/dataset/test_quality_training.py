"""Training the patch filter from a labels CSV: the features forest beats the untrained default on held-out
labels that include hard cases; the nn recipe runs on the CPU; the command writes its outputs."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cellemnet.dataset.labeling import write_labels_csv
from cellemnet.dataset.quality import (
    UNINFORMATIVE_KINDS,
    load_feature_model,
    predict_informative,
    spoil_patch,
    train_patch_classifier,
)
from cellemnet.errors import InputError
from cellemnet.io import write_image
from cellemnet.synthetic import make_image

SCRIPT = Path(__file__).resolve().parents[2] / "dataset" / "train_patch_classifier.py"


def _blur(patch, sigma):
    import cv2

    out = cv2.GaussianBlur(patch.astype(np.float32), (0, 0), sigma)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def synthetic_good(n, seed, size=224):
    looks = ("tem", "sem_inverted", "fib_sem", "sstem")
    out = []
    for i in range(n):
        img, _ = make_image((size * 2, size * 2), look=looks[i % len(looks)], seed=seed + i)
        y, x = (i // 2 % 2) * size, (i % 2) * size
        out.append(img[y:y + size, x:x + size])
    return out


def labelled_set(good_sources, rng):
    """good: real-looking patches; bad: the obvious kinds plus a hard, threshold-borderline kind (mild blur,
    sigma 1.3-2) that the label-free default mostly keeps but this labeller calls bad."""
    patches, labels = [], []
    for p in good_sources:
        patches.append(p)
        labels.append(True)
        kind = UNINFORMATIVE_KINDS[rng.integers(len(UNINFORMATIVE_KINDS))]
        patches.append(spoil_patch(p, kind, rng))
        labels.append(False)
        patches.append(_blur(p, rng.uniform(1.3, 2.0)))
        labels.append(False)
    return patches, np.array(labels)


def write_labelled(folder: Path, patches, labels) -> Path:
    rows = {}
    for i, (p, good) in enumerate(zip(patches, labels)):
        rows[f"patches/{i:04d}.tiff"] = "good" if good else "bad"
        write_image(folder / "patches" / f"{i:04d}.tiff", p)
    rows["patches/unlabelled.tiff"] = "none"
    write_image(folder / "patches" / "unlabelled.tiff", patches[0])
    return write_labels_csv(folder / "labels.csv", rows)


@pytest.mark.shared_data
def test_trained_features_model_beats_default_on_held_out_labels(shared_data, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    real = []
    for path in sorted((shared_data / "isbi2012" / "train" / "images").glob("*.png")):
        img = np.asarray(Image.open(path).convert("L"))
        real += [img[:224, :224], img[288:, 288:]]
    real += [np.asarray(Image.open(p).convert("L")) for p in sorted((shared_data / "cem-examples").glob("*/*.tiff"))]
    rng.shuffle(real)
    train_good = real[:40] + synthetic_good(24, seed=100)
    test_good = real[40:] + synthetic_good(12, seed=500)
    train_patches, train_labels = labelled_set(train_good, rng)
    test_patches, test_labels = labelled_set(test_good, rng)

    csv_path = write_labelled(tmp_path / "train", train_patches, train_labels)
    metrics = train_patch_classifier(csv_path, tmp_path / "model", method="features", log=lambda *_: None)
    model_path = tmp_path / "model" / "patch_filter_features.json"
    assert Path(metrics["weights"]) == model_path and load_feature_model(model_path).trees
    assert metrics["n_val"] == pytest.approx(0.15 * len(train_patches), abs=1)

    default_acc = (predict_informative(test_patches) == test_labels).mean()
    trained_acc = (predict_informative(test_patches, weights=model_path) == test_labels).mean()
    print(f"\nheld-out accuracy ({len(test_labels)} patches): default rules {default_acc:.3f}, "
          f"trained forest {trained_acc:.3f}")
    assert trained_acc > default_acc
    assert trained_acc >= 0.9


def test_train_command_features_writes_outputs(tmp_path):
    rng = np.random.default_rng(1)
    patches, labels = labelled_set(synthetic_good(24, seed=7, size=96), rng)
    csv_path = write_labelled(tmp_path, patches, labels)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(SCRIPT), str(csv_path), str(out), "--method", "features"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "validation" in proc.stdout and "default rules" in proc.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_labelled"] == 72 and metrics["validation"]["accuracy"] > 0.8
    assert (out / "patch_quality_features_roc_curve.png").stat().st_size > 1000
    assert (out / "confusion_matrix.csv").read_text().startswith("true\\predicted,bad,good")


def test_train_command_rejects_bad_labels(tmp_path):
    rng = np.random.default_rng(2)
    patches, labels = labelled_set(synthetic_good(8, seed=3, size=64), rng)
    csv_path = write_labelled(tmp_path, patches, labels)  # 24 labelled: too few
    proc = subprocess.run([sys.executable, str(SCRIPT), str(csv_path), str(tmp_path / "out")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "at least 64" in proc.stderr and "labels.csv" in proc.stderr
    assert "Traceback" not in proc.stderr
    bad = tmp_path / "bad.csv"
    bad.write_text("image,label\npatches/0000.tiff,ok\n")
    proc = subprocess.run([sys.executable, str(SCRIPT), str(bad), str(tmp_path / "out")], capture_output=True,
                          text=True)
    assert proc.returncode == 2 and "bad.csv" in proc.stderr and "'ok'" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_one_class_labels_are_refused(tmp_path):
    patches = synthetic_good(64, seed=9, size=48)
    csv_path = write_labelled(tmp_path, patches, np.ones(64, bool))
    with pytest.raises(InputError, match="both good and bad"):
        train_patch_classifier(csv_path, tmp_path / "out", log=lambda *_: None)


@pytest.mark.slow  # ~30 s on a shared 2-core machine (ResNet34 + MLflow start-up)
def test_nn_training_runs_on_cpu_and_its_weights_load(tmp_path, monkeypatch):
    import torch

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # no cached ImageNet weights -> random init
    torch.set_num_threads(2)
    rng = np.random.default_rng(3)
    patches, labels = labelled_set(synthetic_good(22, seed=11, size=64), rng)
    csv_path = write_labelled(tmp_path, patches, labels)
    logs = []
    metrics = train_patch_classifier(csv_path, tmp_path / "nn", method="nn", epochs=1, batch_size=16,
                                     device="cpu", log=logs.append, progress=False, track=True,
                                     tracking_dir=tmp_path / "mlflow", nn_input_size=64)
    assert any("RANDOM" in line for line in logs)
    assert metrics["init"] == "random" and metrics["device"] == "cpu"
    weights = tmp_path / "nn" / "patch_quality_classifier_nn.pth"
    keep = predict_informative(patches[:4], weights=weights, method="nn")
    assert keep.shape == (4,) and keep.dtype == bool
    from cellemnet.tracking import read_runs

    runs = read_runs("patch_classifier", tracking_dir=tmp_path / "mlflow")
    assert len(runs) == 1 and "metrics.val_accuracy" in runs.columns
