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


def prediction_rows(out: Path, bench: Path, arms: list[str], seed: int, n: int = 3):
    """(name, image, mask, {arm: prediction}) for the first test images, predictions of one seed."""
    from cellemnet.io import read_image

    rows = []
    for image_path in sorted((bench / "test2d" / "images").iterdir())[:n]:
        image = read_image(image_path)
        mask_path = bench / "test2d" / "masks" / image_path.name
        mask = read_image(mask_path) if mask_path.exists() else None
        preds = {}
        for arm in arms:
            pred_path = out / "predictions" / arm / f"seed{seed}" / "2d" / image_path.name
            if pred_path.exists():
                preds[arm] = read_image(pred_path)
        if len(preds) == len(arms):
            rows.append((image_path.name, image, mask, preds))
    return rows


def _mean_sd(values) -> tuple[float, float]:
    v = np.asarray(list(values), dtype=float)
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def compare_arms(ious: Mapping[str, Mapping[int, Mapping[str, float]]], kind: str,
                 base: str = "random_init", other: str = "pretrained") -> dict:
    """Mean +- sd per arm over seeds and the paired per-seed difference (other - base), as numbers and text."""
    seeds = sorted(set(ious[base]) & set(ious[other]))
    diffs = [ious[other][s][kind] - ious[base][s][kind] for s in seeds]
    out = {"seeds": seeds, "per_seed": {arm: [ious[arm][s][kind] for s in seeds] for arm in (base, other)},
           "differences": diffs}
    for arm in (base, other):
        m, sd = _mean_sd(out["per_seed"][arm])
        out[f"{arm}_mean"], out[f"{arm}_sd"] = m, sd
        out[arm] = f"{m:.3f} ± {sd:.3f}"
    m, sd = _mean_sd(diffs)
    out["difference_mean"], out["difference_sd"] = m, sd
    out["difference"] = f"{m:+.3f} ± {sd:.3f}"
    return out


def _verdict_lines(verdict: Mapping | None, records: list) -> list[str]:
    if verdict is None:
        return ["**Verdict: none** (the run wrote no health record).", ""]
    if verdict["learned"]:
        lines = [f"**Verdict: learned** — {verdict['reason']}.", ""]
    else:
        lines = [f"**Verdict: DID NOT LEARN** — {verdict['reason']}. The pretrained arm below starts from this "
                 "encoder (exported with --force), so it shows what an unlearned encoder costs, not what "
                 "pretraining buys.", ""]
    if records:
        first, last = records[0], records[-1]
        lines += ["| health (fixed patches, eval mode) | initial encoder | end of run |", "|---|---|---|"]
        for key, label in (("retrieval", "retrieval of the other view (trunk features)"),
                           ("sim_gap", "similarity gap, same patch - different patches"),
                           ("spread", "embedding spread (1 = uniform, 0 = collapsed)"),
                           ("feature_rank", "effective rank of the trunk features"),
                           ("probe_iou", "online probe IoU")):
            if key in first and key in last:
                lines.append(f"| {label} | {first[key]:.3f} | {last[key]:.3f} |")
        lines.append("")
    return lines


def write_report(out: Path, ious: Mapping[str, Mapping[int, Mapping[str, float]]], timings: Mapping[str, float],
                 total_seconds: float, bench: Path | None = None, verdict: Mapping | None = None,
                 probe: Mapping | None = None) -> dict:
    """ious[arm][seed] = {"2d": IoU, "3d": IoU}; verdict from the pretraining's health.json; probe from
    evaluation/probe_encoder.py's result.json."""
    import json

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
    health_file = out / "pretraining" / "health.json"
    records = json.loads(health_file.read_text())["records"] if health_file.is_file() else []
    if records:
        made["health"] = figures.health_curves(records, fig_dir / "pretraining_health.png")
    comparison = {kind: compare_arms(ious, kind) for kind in ("2d", "3d")}
    bars = {"2D test images": {arm: comparison["2d"]["per_seed"][arm] for arm in ious},
            "3D test volume": {arm: comparison["3d"]["per_seed"][arm] for arm in ious}}
    made["iou"] = figures.bars_with_seeds(bars, fig_dir / "iou.png",
                                          title="Test_Set_IoU over seeds: random init vs pretrained")
    first_seed = comparison["2d"]["seeds"][0]
    rows = prediction_rows(out, bench, list(ious), first_seed)
    if rows:
        made["overlays"] = figures.overlays(rows, fig_dir / "predictions.png")

    n_seeds = len(comparison["2d"]["seeds"])
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
    lines += ["## 2. Pretraining (MoCoV2, ResNet-18, `pretraining/configs/mocov2_small.yaml`)", ""]
    lines += _verdict_lines(verdict, records)
    if "health" in made:
        lines += ["![pretraining health](figures/pretraining_health.png)", ""]
    if "loss" in made:
        lines += [f"Loss from {losses[0]:.3f} to {losses[-1]:.3f} over {len(losses)} logged points (the loss alone "
                  "is no evidence: MoCo's loss rises while its queue fills with real keys).", "",
                  "![pretraining loss](figures/pretraining_loss.png)", ""]
    if probe:
        lines += ["## 3. Encoder probe (frozen encoder, per-pixel linear head, no decoder)", "",
                  f"Probe IoU {probe['encoder_mean']:.3f} ± {probe['encoder_sd']:.3f} for the pretrained encoder, "
                  f"{probe['random_mean']:.3f} ± {probe['random_sd']:.3f} for frozen random encoders of the same "
                  f"architecture; paired difference {probe['difference_mean']:+.3f} ± {probe['difference_sd']:.3f} "
                  f"over {len(probe['seeds'])} seeds.", ""]
    lines += ["## 4. Evaluation (U-Net fine-tuning, the paper's protocol)", "",
              f"Pretrained encoder frozen (only the decoder trains) vs random init trained end to end; {n_seeds} "
              "seeds per arm, the same seed gives both arms the same decoder init and data order. "
              "Difference = pretrained - random, paired by seed.", "",
              "| | random init (mean ± sd) | pretrained (mean ± sd) | paired difference |", "|---|---|---|---|"]
    for kind, label in (("2d", "Test_Set_IoU 2D"), ("3d", "Test_Set_IoU 3D")):
        c = comparison[kind]
        lines.append(f"| {label} | {c['random_init']} | {c['pretrained']} | {c['difference']} |")
    lines += ["", "Per seed (2D): " + ", ".join(
        f"seed {s}: {r:.3f} vs {p:.3f}" for s, r, p in zip(comparison["2d"]["seeds"],
                                                          comparison["2d"]["per_seed"]["random_init"],
                                                          comparison["2d"]["per_seed"]["pretrained"])), "",
              "![IoU](figures/iou.png)", ""]
    table = fig_dir / "benchmark_iou.md"
    if table.exists():  # written by evaluation/report.py from the MLflow runs
        lines += ["The same runs read back from MLflow by `evaluation/report.py`:", "", table.read_text().strip(), ""]
    if "overlays" in made:
        lines += [f"Predictions of seed {first_seed}:", "", "![predictions](figures/predictions.png)", ""]
    lines += ["## Time per step", "", "| step | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.0f} |" for k, v in timings.items()]
    lines += ["", "## Explore the runs", "",
              "Every pretraining and fine-tuning run is in the local MLflow store. Open it with:", "",
              "```", f"{Path(sys.executable).parent / 'mlflow'} ui --backend-store-uri {tracking_uri()}",
              "```", "", "then browse to http://127.0.0.1:5000. Step logs are in `logs/`.", ""]
    atomic_write_text(out / "report.md", "\n".join(lines))
    return {"counts": {k: counts[k] for k in ("raw", "deduplicated", "kept")},
            "figures": {k: str(v) for k, v in made.items()}, "comparison": comparison}
