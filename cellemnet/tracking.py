"""MLflow tracking in one place.

The default store is a local SQLite file (no server needed): `sqlite:///<dir>/mlflow.db`, with artifacts in
`<dir>/mlruns`. Set MLFLOW_TRACKING_URI to use a server instead. Tracking is off when `enabled` is False or on
any rank but 0, and then every call is a cheap no-op, so training code never branches on it.

mlflow is imported lazily: it is slow to import and curation commands must start fast.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping

from cellemnet.errors import InputError

DEFAULT_TRACKING_DIR = "mlflow_store"



def _use_uri(uri: str) -> None:
    """Point mlflow's fluent API at uri without touching os.environ.

    mlflow.set_tracking_uri() also writes MLFLOW_TRACKING_URI into os.environ; left there, it would override every
    later tracking_dir in this process (and leak into child processes), so the user's own value is restored.
    """
    import mlflow

    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


def tracking_uri(tracking_dir: str | os.PathLike | None = None, create: bool = True) -> str:
    """MLFLOW_TRACKING_URI when set, else a SQLite file inside tracking_dir (default ./mlflow_store).

    create=False is for readers: a folder without a store is an InputError, and nothing is created (a report
    pointed at the wrong folder must not leave an empty mlflow.db there)."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    d = Path(tracking_dir or DEFAULT_TRACKING_DIR).resolve()
    if not create:
        if not (d / "mlflow.db").is_file():
            raise InputError(f"{tracking_dir or DEFAULT_TRACKING_DIR}: no MLflow store here (no mlflow.db); give the "
                             "folder the runs were tracked in (their tracking_dir) or set MLFLOW_TRACKING_URI")
        return f"sqlite:///{d / 'mlflow.db'}"
    d.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{d / 'mlflow.db'}"


def artifact_root(tracking_dir: str | os.PathLike | None = None) -> str:
    d = Path(tracking_dir or DEFAULT_TRACKING_DIR).resolve() / "mlruns"
    return d.as_uri()


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> flat {'a.b': 'value'} with values cut to MLflow's 6,000-character limit."""
    out: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_params(value, prefix=f"{name}."))
        else:
            out[name] = str(value)[:6000]
    return out


class Tracker:
    """A thin wrapper around one MLflow run; every method is a no-op when tracking is off."""

    def __init__(self, run=None, client=None):
        self._run = run
        self._client = client

    @property
    def active(self) -> bool:
        return self._run is not None

    @property
    def run_id(self) -> str | None:
        return self._run.info.run_id if self._run is not None else None

    def log_params(self, params: Mapping[str, Any]) -> None:
        if not self.active:
            return
        import mlflow

        flat = flatten_params(params)
        items = list(flat.items())
        for i in range(0, len(items), 100):  # MLflow caps a batch at 100 params
            mlflow.log_params(dict(items[i : i + 100]), run_id=self.run_id)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if not self.active:
            return
        import mlflow

        clean = {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}
        if clean:
            mlflow.log_metrics(clean, step=step, run_id=self.run_id)

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        if not self.active:
            return
        import mlflow

        mlflow.log_artifact(str(path), artifact_path=artifact_path, run_id=self.run_id)

    def log_model(self, model, input_example, output_example, name: str = "model") -> str | None:
        """`mlflow.pytorch.log_model` of an eager torch module (CPU), with the signature of (input_example ->
        output_example), numpy arrays; the MLflow UI lists it under the run's models. Saved as "pt2"
        (torch.export: a graph, no pickle). Returns the model URI (None when tracking is off)."""
        if not self.active:
            return None
        import logging

        import mlflow
        import torch
        from mlflow.models import infer_signature

        export_log = logging.getLogger("torch._export")  # torch.export notes each dimension it specialises
        level = export_log.level
        export_log.setLevel(logging.ERROR)
        try:
            info = mlflow.pytorch.log_model(
                model, name=name, signature=infer_signature(input_example, output_example),
                input_example=input_example, serialization_format="pt2",
                # given, so that MLflow does not infer them by loading the model in a subprocess (seconds)
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
            )
        finally:
            export_log.setLevel(level)
        return info.model_uri

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if not self.active:
            return
        import mlflow

        mlflow.set_tags({k: str(v) for k, v in tags.items()})

    def end(self, status: str = "FINISHED") -> None:
        if not self.active:
            return
        import mlflow

        mlflow.end_run(status=status)
        self._run = None

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.end("FINISHED" if exc_type is None else "FAILED")


def start_run(
    experiment: str,
    run_name: str | None = None,
    params: Mapping[str, Any] | None = None,
    enabled: bool = True,
    rank: int = 0,
    run_id: str | None = None,
    tracking_dir: str | os.PathLike | None = None,
    tags: Mapping[str, Any] | None = None,
) -> Tracker:
    """Start (or, given run_id, resume) an MLflow run and return a Tracker; a no-op Tracker when off."""
    if not enabled or rank != 0:
        return Tracker()
    import mlflow

    uri = tracking_uri(tracking_dir)
    _use_uri(uri)
    if mlflow.get_experiment_by_name(experiment) is None:
        kwargs = {}
        if uri.startswith("sqlite:"):
            kwargs["artifact_location"] = artifact_root(tracking_dir)
        mlflow.create_experiment(experiment, **kwargs)
    mlflow.set_experiment(experiment)
    if mlflow.active_run() is not None:
        mlflow.end_run()
    if run_id:
        run = mlflow.start_run(run_id=run_id)
    else:
        run = mlflow.start_run(run_name=run_name)
    tracker = Tracker(run)
    if params and not run_id:
        tracker.log_params(params)
    if tags:
        tracker.set_tags(tags)
    return tracker


def read_runs(experiment: str | None = None, tracking_dir: str | os.PathLike | None = None):
    """All runs (of one experiment, or every experiment) as a pandas DataFrame, for reports."""
    import mlflow

    _use_uri(tracking_uri(tracking_dir, create=False))
    if experiment is None:
        return mlflow.search_runs(search_all_experiments=True)
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        import pandas as pd

        return pd.DataFrame()
    return mlflow.search_runs(experiment_ids=[exp.experiment_id])
