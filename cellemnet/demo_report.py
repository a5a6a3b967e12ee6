"""The demo's report: counts, figures and `report.md`, from the files the stage scripts wrote.

Every number here is read back from disk (manifests, MLflow, predictions), never passed along in memory, so the
report shows what a user would find in the output folder.
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Mapping

import numpy as np


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def curation_counts(out: Path) -> dict:
    """Patches cut (raw), left after de-duplication, and kept by the filter, with examples of each fate."""
    from cellemnet.dataset.store import MANIFEST_NAME

    shards = out / "shards"
    rows = []
    for manifest in sorted(shards.glob(f"**/{MANIFEST_NAME}")):
        rows.extend(_read_csv(manifest))
    raw = len(rows)
    deduplicated = sum(1 for r in rows if r.get("status") == "kept")
    from cellemnet.dataset.classify import MANIFEST_NAME as FILTER_MANIFEST

    filter_manifest = out / "curated" / FILTER_MANIFEST
    decisions = _read_csv(filter_manifest) if filter_manifest.exists() else []
    kept = sum(1 for r in decisions if str(r.get("decision")).lower() in ("keep", "kept", "true", "informative"))
    return {"raw": raw, "deduplicated": deduplicated, "kept": kept, "filtered_out": len(decisions) - kept,
            "rows": rows, "decisions": decisions}


def patch_examples(out: Path, counts: dict, per_group: int = 8) -> dict[str, list[np.ndarray]]:
    """A few kept, duplicate and uninformative patches, read back from the shards and the curated folder."""
    from cellemnet.dataset.store import ShardReader, list_shards
    from cellemnet.io import read_image

    kept_files = sorted((out / "curated").glob("**/*.tiff"))
    rng = np.random.default_rng(0)
    groups: dict[str, list[np.ndarray]] = {"kept (informative, unique)": [], "dropped: uninformative": [],
                                           "dropped: near-duplicate (exemplar it duplicates on its left)": []}
    if kept_files:
        for i in rng.choice(len(kept_files), size=min(per_group, len(kept_files)), replace=False):
            groups["kept (informative, unique)"].append(read_image(kept_files[i]))
    dropped = [r for r in counts["decisions"] if str(r.get("decision")).lower() in ("drop", "dropped", "false", "uninformative")]
    by_name = {r["name"]: r for r in dropped}
    dup_pairs = [(r["name"], r["duplicate_of"]) for r in counts["rows"] if r.get("status") == "duplicate" and r.get("duplicate_of")]
    wanted = set(by_name) | {n for pair in dup_pairs[: per_group // 2] for n in pair}
    found: dict[str, np.ndarray] = {}
    for shard in list_shards(out / "shards", recursive=True):
        with ShardReader(shard) as reader:
            for i, name in enumerate(reader.names):
                if name in wanted:
                    found[name] = reader.read(i)
    groups["dropped: uninformative"] = [found[n] for n in list(by_name)[:per_group] if n in found]
    for dup, exemplar in dup_pairs[: per_group // 2]:
        if dup in found and exemplar in found:
            groups["dropped: near-duplicate (exemplar it duplicates on its left)"].extend([found[exemplar], found[dup]])
    return groups


def pretraining_history(experiment: str = "demo_pretraining") -> tuple[list[int], list[float]]:
    """The loss MLflow recorded for the demo's pretraining run (the newest run of that experiment)."""
    from mlflow.tracking import MlflowClient

    from cellemnet.tracking import tracking_uri

    client = MlflowClient(tracking_uri())
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return [], []
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        return [], []
    keys = [k for k in runs[0].data.metrics if k in ("loss", "train_loss", "iter_loss")] or \
           [k for k in runs[0].data.metrics if "loss" in k]
    if not keys:
        return [], []
    key = "iter_loss" if "iter_loss" in keys else keys[0]
    history = sorted(client.get_metric_history(runs[0].info.run_id, key), key=lambda m: m.step)
    return [m.step for m in history], [m.value for m in history]


def prediction_rows(out: Path, bench: Path, arms: list[str], n: int = 3):
    from cellemnet.io import read_image

    rows = []
    for image_path in sorted((bench / "test2d" / "images").iterdir())[:n]:
        image = read_image(image_path)
        mask_path = bench / "test2d" / "masks" / image_path.name
        mask = read_image(mask_path) if mask_path.exists() else None
        preds = {}
        for arm in arms:
            pred_path = out / "predictions" / arm / "2d" / image_path.name
            if pred_path.exists():
                preds[arm] = read_image(pred_path)
        if len(preds) == len(arms):
            rows.append((image_path.name, image, mask, preds))
    return rows


def write_report(out: Path, ious: Mapping[str, Mapping[str, float]], timings: Mapping[str, float],
                 total_seconds: float, bench: Path | None = None) -> dict:
    from cellemnet import figures
    from cellemnet.io import atomic_write_text
    from cellemnet.tracking import tracking_uri

    out = Path(out)
    bench = bench or out / "benchmark"
    fig_dir = out / "figures"
    counts = curation_counts(out)
    made = {}
    groups = patch_examples(out, counts)
    if any(groups.values()):
        made["montage"] = figures.montage(groups, fig_dir / "curation_montage.png", title="Curation: what was kept and dropped")
    steps, losses = pretraining_history()
    if steps:
        made["loss"] = figures.loss_curve(steps, losses, fig_dir / "pretraining_loss.png", title="MoCoV2 pretraining loss")
    bars = {"2D test images": {arm: v["2d"] for arm, v in ious.items()},
            "3D test volume": {arm: v["3d"] for arm, v in ious.items()}}
    made["iou"] = figures.grouped_bars(bars, fig_dir / "iou.png", title="Test_Set_IoU: random init vs pretrained")
    rows = prediction_rows(out, bench, list(ious))
    if rows:
        made["overlays"] = figures.overlays(rows, fig_dir / "predictions.png")

    lines = [
        "# CellEMNet demo report", "",
        f"Whole pipeline on {'built-in synthetic' if (out / 'raw').exists() else 'your'} data in {total_seconds / 60:.1f} minutes.", "",
        "## 1. Curation", "",
        "| step | patches |", "|---|---|",
        f"| cut from images and volumes (raw) | {counts['raw']} |",
        f"| after de-duplication (dHash, Hamming <= 12) | {counts['deduplicated']} |",
        f"| kept by the informative-patch filter | {counts['kept']} |", "",
    ]
    if "montage" in made:
        lines += ["![curation montage](figures/curation_montage.png)", ""]
    lines += ["## 2. Pretraining (MoCoV2, ResNet-50)", ""]
    if "loss" in made:
        lines += [f"Loss from {losses[0]:.3f} to {losses[-1]:.3f} over {len(losses)} logged points.", "",
                  "![pretraining loss](figures/pretraining_loss.png)", ""]
    lines += ["## 3. Evaluation (U-Net fine-tuning)", "",
              "| initialisation | Test_Set_IoU 2D | Test_Set_IoU 3D |", "|---|---|---|"]
    for arm, v in ious.items():
        lines.append(f"| {arm} | {v['2d']:.3f} | {v['3d']:.3f} |")
    lines += ["", "![IoU](figures/iou.png)", ""]
    table = fig_dir / "benchmark_iou.md"
    if table.exists():  # written by evaluation/report.py from the MLflow runs
        lines += ["The same runs read back from MLflow by `evaluation/report.py` (each run's last logged Test_Set_IoU, the 3D one):", "", table.read_text().strip(), ""]
    if "overlays" in made:
        lines += ["![predictions](figures/predictions.png)", ""]
    lines += ["## Time per step", "", "| step | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.0f} |" for k, v in timings.items()]
    lines += ["", "## Explore the runs", "",
              "Every pretraining and fine-tuning run is in the local MLflow store. Open it with:", "",
              "```", f"{Path(sys.executable).parent / 'mlflow'} ui --backend-store-uri {tracking_uri()}",
              "```", "", "then browse to http://127.0.0.1:5000. Step logs are in `logs/`.", ""]
    atomic_write_text(out / "report.md", "\n".join(lines))
    return {"counts": {k: counts[k] for k in ("raw", "deduplicated", "kept")}, "figures": {k: str(v) for k, v in made.items()}}
