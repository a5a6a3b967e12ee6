"""Small builders shared by the evaluation tests (tiny benchmarks and configs)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "evaluation" / "configs" / "example.yaml"
CONFIGS = ROOT / "evaluation" / "benchmark_configs"


def tiny_benchmark(outdir: Path, size: int = 64, n_train: int = 2, n_test: int = 2, depth: int = 8) -> Path:
    """A synthetic benchmark in the evaluation layout (train/valid/test2d/test3d)."""
    from cellemnet.synthetic import make_benchmark

    make_benchmark(outdir, n_train=n_train, n_test=n_test, shape=(size, size), volume_shape=(depth, size, size),
                   n_valid=1, n_test3d=1)
    return outdir


def tiny_config(path: Path, data_dir: Path, **overrides) -> Path:
    """A config for fast CPU runs: random init, 64-px crops, batch 2, two iterations; no logged model (log_model
    costs 5-10 s a run; test_eval_finetune's shared run turns it on and checks it)."""
    cfg = yaml.safe_load(EXAMPLE.read_text())
    cfg.update({
        "data_dir": str(data_dir), "test_dir2d": str(data_dir / "test2d"), "test_dir3d": str(data_dir / "test3d"),
        "iters": 2, "num_prints": 1, "bsz": 2, "jobs": 0, "model_dir": str(path.parent / "models"),
        "augmentations": [{"aug": "RandomResizedCrop", "height": 64, "width": 64, "scale": [0.5, 1.0]},
                          {"aug": "HorizontalFlip"}],
        "tracking_dir": str(path.parent / "mlflow_store"), "log_model": False,
    })
    cfg.update(overrides)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def write_png(path: Path, array: np.ndarray) -> None:
    from cellemnet.io import write_image

    path.parent.mkdir(parents=True, exist_ok=True)
    write_image(path, array)
