"""The demo's report: counts, figures and `report.md`, from the files the stage scripts wrote.

Every number here is read back from disk (manifests, MLflow, predictions), never passed along in memory, so the
report shows what a user would find in the output folder.
"""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Mapping

import numpy as np

from cellemnet import figures
from cellemnet.dataset.classify import MANIFEST_NAME as FILTER_MANIFEST
from cellemnet.dataset.store import MANIFEST_NAME, ShardReader, list_shards
from cellemnet.evaluation.report import METRIC, summarise_arms
from cellemnet.io import atomic_write_text, read_image
from cellemnet.tracking import tracking_uri


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def curation_counts(out: Path) -> dict:
    """Patches cut (raw), left after de-duplication, and kept by the filter, with examples of each fate."""
    shards = out / "shards"
    rows = []
    for manifest in sorted(shards.glob(f"**/{MANIFEST_NAME}")):
        rows.extend(_read_csv(manifest))
    raw = len(rows)
    deduplicated = sum(1 for r in rows if r.get("status") == "kept")

    filter_manifest = out / "curated" / FILTER_MANIFEST
    decisions = _read_csv(filter_manifest) if filter_manifest.exists() else []
    kept = sum(1 for r in decisions if str(r.get("decision")).lower() in ("keep", "kept", "true", "informative"))
    return {"raw": raw, "deduplicated": deduplicated, "kept": kept, "filtered_out": len(decisions) - kept,
            "rows": rows, "decisions": decisions}


def patch_examples(out: Path, counts: dict, per_group: int = 8) -> dict[str, list[np.ndarray]]:
    """A few kept, duplicate and uninformative patches, read back from the shards and the curated folder."""
    kept_files = sorted((out / "curated").glob("**/*.tiff"))
    rng = np.random.default_rng(0)
    groups: dict[str, list[np.ndarray]] = {"kept (informative, unique)": [], "dropped: uninformative": [],
                                           "dropped: near-duplicate (exemplar it duplicates on its left)": []}
    if kept_files:
        for i in rng.choice(len(kept_files), size=min(per_group, len(kept_files)), replace=False):
            groups["kept (informative, unique)"].append(read_image(kept_files[i]))
    dropped = [r for r in counts["decisions"]
               if str(r.get("decision")).lower() in ("drop", "dropped", "false", "uninformative")]
    by_name = {r["name"]: r for r in dropped}
    dup_pairs = [(r["name"], r["duplicate_of"]) for r in counts["rows"]
                 if r.get("status") == "duplicate" and r.get("duplicate_of")]
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


def _text(mean: float, sd: float | None, signed: bool = False) -> str:
    return (f"{mean:+.3f}" if signed else f"{mean:.3f}") + f" ± {sd if sd is not None else 0.0:.3f}"


def compare_arms(ious: Mapping[str, Mapping[int, Mapping[str, float]]], arms, kind: str) -> dict:
    """Per-arm mean ± sd over seeds and the two paired comparisons, through evaluation.report.summarise_arms.

    ious[arm key][seed][kind]; arms: the demo's Arm records. Returns {"arms": summarise_arms' arms,
    "paper": pretrained frozen - random end to end, "frozen": pretrained frozen - random frozen}, each comparison
    {"arm", "baseline" (mean ± sd text), "difference" (text), "mean", "sd", "per_seed", "wins", "n"}."""
    by_key = {a.key: a for a in arms}
    rows = [{"arm": by_key[key].pretraining, "finetune_layer": by_key[key].finetune_layer, "seed": seed,
             METRIC: scores[kind]} for key, per_seed in ious.items() for seed, scores in per_seed.items()]
    summary = summarise_arms(rows)
    stats = {(a["arm"], a["finetune_layer"]): a for a in summary["arms"]}
    out: dict = {"arms": summary["arms"]}
    for name, base_layer in (("paper", "all"), ("frozen", "none")):
        for d in summary["differences"]:
            if (d["arm"] == "pretrained" and d["finetune_layer"] == "none"
                    and d["baseline_finetune_layer"] == base_layer):
                mine, base = stats[("pretrained", "none")], stats[("random_init", base_layer)]
                out[name] = {"arm": _text(mine["mean"], mine["sd"]), "baseline": _text(base["mean"], base["sd"]),
                             "difference": _text(d["mean"], d["sd"], signed=True), "mean": d["mean"],
                             "sd": d["sd"], "per_seed": d["per_seed"], "wins": d["wins"], "n": d["n"]}
    return out


NOISE = 0.02  # a mean paired difference within this of zero counts as "no worse beyond noise"


def conclusion(comparison_2d: Mapping, probe: Mapping | None) -> str:
    """One honest sentence on what pretraining bought in 2D, from the paired differences."""
    parts = []
    paper, frozen = comparison_2d.get("paper"), comparison_2d.get("frozen")
    if paper:
        if paper["mean"] >= NOISE:
            parts.append(f"Under the paper's protocol the frozen pretrained encoder beats random init trained end "
                         f"to end ({paper['difference']}).")
        elif paper["mean"] >= -NOISE:
            parts.append(f"Under the paper's protocol the frozen pretrained encoder is as good as random init "
                         f"trained end to end, within noise ({paper['difference']}).")
        else:
            parts.append(f"**Under the paper's protocol pretraining does not pay off here**: the frozen pretrained "
                         f"encoder is {-paper['mean']:.3f} IoU behind random init trained end to end "
                         f"({paper['difference']}); a few CPU minutes of pretraining do not replace training the "
                         "encoder on the labels.")
    if frozen:
        ahead = "ahead of" if frozen["mean"] > NOISE else ("level with" if frozen["mean"] >= -NOISE else "behind")
        parts.append(f"Frozen against frozen, the pretrained features are {ahead} random ones ({frozen['difference']}, "
                     f"{frozen['wins']} of {frozen['n']} seeds won).")
    if probe:
        parts.append(f"The probe's difference: {probe['difference_mean']:+.3f}.")
    return " ".join(parts)


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


def _evaluation_lines(comparison: Mapping, probe: Mapping | None, ious, labels: Mapping[str, str],
                      seeds: list[int]) -> list[str]:
    """Section 4 of the report: both protocols' table, the conclusion sentence, the per-seed values, the chart."""
    n_seeds = len(seeds)
    lines: list[str] = []
    lines += ["## 4. Evaluation (U-Net fine-tuning)", "",
              f"{n_seeds} seeds per arm; one seed gives every arm the same decoder init and data order. Two "
              "comparisons, each paired by seed (difference = pretrained - random): the paper's protocol, the "
              "pretrained encoder frozen (only the decoder trains) against random init trained end to end; and "
              "frozen against frozen (a frozen random encoder), which isolates what the encoder's features are "
              "worth.", "",
              "| | random init (mean ± sd) | pretrained, frozen (mean ± sd) | paired difference | seeds won |",
              "|---|---|---|---|---|"]
    for name, label in (("paper", "end to end (the paper's protocol)"), ("frozen", "frozen")):
        for kind in ("2d", "3d"):
            c = comparison[kind].get(name)
            if c:
                lines.append(f"| Test_Set_IoU {kind.upper()}, random {label} | {c['baseline']} | {c['arm']} | "
                             f"{c['difference']} | {c['wins']} of {c['n']} |")
    lines += ["", conclusion(comparison["2d"], probe), "", "Per seed (2D): " + "; ".join(
        f"seed {s}: " + ", ".join(f"{labels[k]} {ious[k][s]['2d']:.3f}" for k in ious) for s in seeds), "",
              "![IoU](figures/iou.png)", ""]
    return lines


def _curation_lines(out: Path, counts: Mapping, total_seconds: float, montage: bool) -> list[str]:
    lines = [
        "# CellEMNet demo report", "",
        f"Whole pipeline on {'built-in synthetic' if (out / 'raw').exists() else 'your'} data in "
        f"{total_seconds / 60:.1f} minutes.", "",
        "## 1. Curation", "",
        "| step | patches |", "|---|---|",
        f"| cut from images and volumes (raw) | {counts['raw']} |",
        f"| after de-duplication (dHash, Hamming <= 12) | {counts['deduplicated']} |",
        f"| kept by the informative-patch filter | {counts['kept']} |", "",
    ]
    if montage:
        lines += ["![curation montage](figures/curation_montage.png)", ""]
    return lines


def _footer_lines(timings: Mapping[str, float]) -> list[str]:
    lines = ["## Time per step", "", "| step | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.0f} |" for k, v in timings.items()]
    lines += ["", "## Explore the runs", "",
              "Every pretraining and fine-tuning run is in the local MLflow store. Open it with:", "",
              "```", f"{Path(sys.executable).parent / 'mlflow'} ui --backend-store-uri {tracking_uri()}",
              "```", "", "then browse to http://127.0.0.1:5000. Step logs are in `logs/`.", ""]
    return lines


def write_report(out: Path, ious: Mapping[str, Mapping[int, Mapping[str, float]]], timings: Mapping[str, float],
                 total_seconds: float, arms, bench: Path | None = None, verdict: Mapping | None = None,
                 probe: Mapping | None = None) -> dict:
    """ious[arm key][seed] = {"2d": IoU, "3d": IoU}; arms: the demo's Arm records; verdict from the pretraining's
    health.json; probe from evaluation/probe_encoder.py's result.json."""
    out = Path(out)
    bench = bench or out / "benchmark"
    fig_dir = out / "figures"
    counts = curation_counts(out)
    made = {}
    groups = patch_examples(out, counts)
    if any(groups.values()):
        made["montage"] = figures.montage(groups, fig_dir / "curation_montage.png",
                                          title="Curation: what was kept and dropped")
    steps, losses = pretraining_history()
    if steps:
        made["loss"] = figures.loss_curve(steps, losses, fig_dir / "pretraining_loss.png",
                                          title="MoCoV2 pretraining loss")
    health_file = out / "pretraining" / "health.json"
    records = json.loads(health_file.read_text())["records"] if health_file.is_file() else []
    if records:
        made["health"] = figures.health_curves(records, fig_dir / "pretraining_health.png")
    comparison = {kind: compare_arms(ious, arms, kind) for kind in ("2d", "3d")}
    labels = {a.key: ("pretrained" if a.pretraining == "pretrained" else "random") +
              (", frozen" if a.finetune_layer == "none" else ", end to end") for a in arms}
    bars = {group: {labels[key]: [ious[key][s][kind] for s in sorted(ious[key])] for key in ious}
            for group, kind in (("2D test images", "2d"), ("3D test volume", "3d"))}
    made["iou"] = figures.bars_with_seeds(bars, fig_dir / "iou.png",
                                          title="Test_Set_IoU over seeds (dots: seeds)")
    seeds = sorted(set.intersection(*(set(v) for v in ious.values())))
    first_seed = seeds[0]
    rows = prediction_rows(out, bench, list(ious), first_seed)
    if rows:
        made["overlays"] = figures.overlays(rows, fig_dir / "predictions.png")

    lines = _curation_lines(out, counts, total_seconds, "montage" in made)
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
    lines += _evaluation_lines(comparison, probe, ious, labels, seeds)
    table = fig_dir / "benchmark_iou.md"
    if table.exists():  # written by evaluation/report.py from the MLflow runs
        lines += ["The same runs read back from MLflow by `evaluation/report.py`:", "", table.read_text().strip(), ""]
    if "overlays" in made:
        lines += [f"Predictions of seed {first_seed}:", "", "![predictions](figures/predictions.png)", ""]
    lines += _footer_lines(timings)
    atomic_write_text(out / "report.md", "\n".join(lines))
    return {"counts": {k: counts[k] for k in ("raw", "deduplicated", "kept")},
            "figures": {k: str(v) for k, v in made.items()}, "comparison": comparison}
