"""Helpers for the pretraining tests: tiny patch folders and tiny-run overrides."""
from __future__ import annotations

import numpy as np
import pytest

from cellemnet.io import write_image


def write_patch_folders(root, counts: dict[str, int], size: int = 40, seed: int = 0, suffix: str = ".tif"):
    """root/<source>/<i>.tif random uint8 patches; returns root."""
    rng = np.random.default_rng(seed)
    for source, n in counts.items():
        for i in range(n):
            write_image(root / source / f"p{i:03d}{suffix}", rng.integers(0, 256, (size, size), dtype=np.uint8))
    return root


@pytest.fixture
def patch_root(tmp_path):
    return write_patch_folders(tmp_path / "patches", {"a": 12, "b": 4})


def tiny_overrides(data_path, model_dir, **extra) -> list[str]:
    """Overrides for a seconds-long CPU run (resnet18, 32 px, batch 4, no workers, no MLflow).

    These runs test mechanics on a dozen patches, where the paper's queue and prototype counts cannot work:
    allow_unsafe_ssl turns the guardrails' errors into warnings (tests of the guardrails set it back)."""
    base = {"data_path": str(data_path), "model_dir": str(model_dir), "arch": "resnet18", "batch_size": 4,
            "workers": 0, "print_freq": 1, "logging": False, "device": "cpu", "epochs": 1,
            "allow_unsafe_ssl": "true", "health_patches": 8}
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


@pytest.fixture
def make_patches():
    return write_patch_folders


@pytest.fixture
def tiny():
    return tiny_overrides


@pytest.fixture(autouse=True)
def _one_torch_thread(monkeypatch):
    """Tiny tensors: one thread avoids OpenMP barrier stalls on a busy 2-core machine (measured 9 s vs 140 s)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # for the subprocesses the tests launch
    yield
    torch.set_num_threads(before)
