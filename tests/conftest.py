"""Shared fixtures. `shared_data` finds ../shared/data: a skip with a reason in a user's clone, a failure in CI."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real EM data in ../shared/data; CI=true turns a missing folder into a failure."""
    if not SHARED_DATA.is_dir():
        if in_ci():
            pytest.fail(f"CI=true but the real EM data folder {SHARED_DATA} is missing")
        pytest.skip(f"real EM data not found at {SHARED_DATA} (it ships beside the project in CI)")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _isolated_mlflow(tmp_path, monkeypatch):
    """Keep every test's MLflow store inside its tmp dir unless the test sets a URI itself."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    yield
    if "mlflow" in sys.modules:  # a run left open by a failing test must not swallow the next test's metrics
        import mlflow

        if mlflow.active_run() is not None:
            mlflow.end_run()


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT
