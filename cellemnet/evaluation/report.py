"""Benchmark report from MLflow: a table of test IoU by benchmark and pretraining, and the paper-style bar chart.

Every fine-tuning run that has a `Test_Set_IoU` metric counts. Its benchmark is the run's `benchmark` tag (or the
`experiment_name` param), its pretraining the `pretraining` tag (or the label made from the `pretraining` param the
way checkpoint names are made), and its training length the `iters` param (`epochs` for MultiStep). Repeated runs
of one (benchmark, pretraining, iterations) are averaged, with their standard deviation and count.

Outputs: `benchmark_iou_runs.csv` (one row per run), `benchmark_iou.csv` (the summary), `benchmark_iou.md` (a
benchmark x pretraining table) and a grouped bar chart (`benchmark_iou.png`). The chart shows, per benchmark, the
longest training present unless an iteration count is chosen.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Iterable

from cellemnet.errors import InputError
from cellemnet.evaluation.setup.layout import BENCHMARKS

METRIC = "Test_Set_IoU"
# Arms in the paper's order; custom weight files follow, alphabetically.
PRETRAINING_ORDER = ("random_init", "imagenet_supervised", "imagenet_mocov2", "cellemnet_mocov2", "cellemnet_swav")
DEFAULT_CHART = "benchmark_iou.png"


def _first_present(*values):
    for v in values:
        if v is not None and not (isinstance(v, float) and math.isnan(v)) and str(v) != "":
            return v
    return None


def pretraining_label(value: str) -> str:
    """Named arms as they are; a weights file as its checkpoint label (parent folder name, as the checkpoints)."""
    from cellemnet.evaluation.weights import checkpoint_label

    return checkpoint_label(value)


def collect_results(runs) -> "pd.DataFrame":  # noqa: F821
    """MLflow runs (a DataFrame from cellemnet.tracking.read_runs) -> one row per scored run.

    Columns: benchmark, pretraining, iters, finetune_layer, run_id, Test_Set_IoU. Runs without the metric
    (unfinished, or never scored) are left out.
    """
    import pandas as pd

    columns = ["benchmark", "pretraining", "iters", "finetune_layer", "run_id", METRIC]
    metric = f"metrics.{METRIC}"
    if runs is None or len(runs) == 0 or metric not in runs.columns:
        return pd.DataFrame(columns=columns)
    rows = []
    for _, run in runs.iterrows():
        score = run.get(metric)
        if score is None or (isinstance(score, float) and math.isnan(score)):
            continue
        benchmark = _first_present(run.get("tags.benchmark"), run.get("params.experiment_name"))
        pretraining = run.get("tags.pretraining")
        if _first_present(pretraining) is None:
            raw = _first_present(run.get("params.pretraining"))
            pretraining = pretraining_label(str(raw)) if raw is not None else None
        if benchmark is None or pretraining is None:
            continue
        policy = _first_present(run.get("params.lr_policy"))
        length = run.get("params.epochs") if policy == "MultiStep" else run.get("params.iters")
        length = _first_present(length)
        rows.append({
            "benchmark": str(benchmark),
            "pretraining": str(pretraining),
            "iters": int(float(length)) if length is not None else -1,
            "finetune_layer": str(_first_present(run.get("params.finetune_layer")) or ""),
            "run_id": run.get("run_id"),
            METRIC: float(score),
        })
    return pd.DataFrame(rows, columns=columns)


def _ordered(values: Iterable[str], preferred: tuple[str, ...]) -> list[str]:
    values = list(dict.fromkeys(values))
    known = [v for v in preferred if v in values]
    return known + sorted(v for v in values if v not in preferred)


def summarize(results) -> "pd.DataFrame":  # noqa: F821
    """Mean, standard deviation (0 for one run) and count of the test IoU per (benchmark, pretraining, iters)."""
    import pandas as pd

    if results.empty:
        return pd.DataFrame(columns=["benchmark", "pretraining", "iters", "iou_mean", "iou_std", "runs"])
    grouped = results.groupby(["benchmark", "pretraining", "iters"])[METRIC]
    out = grouped.agg(iou_mean="mean", iou_std="std", runs="count").reset_index()
    out["iou_std"] = out["iou_std"].fillna(0.0)
    out["benchmark"] = pd.Categorical(out["benchmark"], _ordered(out["benchmark"], BENCHMARKS), ordered=True)
    out["pretraining"] = pd.Categorical(out["pretraining"], _ordered(out["pretraining"], PRETRAINING_ORDER),
                                        ordered=True)
    out = out.sort_values(["benchmark", "iters", "pretraining"]).reset_index(drop=True)
    out["benchmark"] = out["benchmark"].astype(str)
    out["pretraining"] = out["pretraining"].astype(str)
    return out


def chart_rows(summary, iters: int | None = None):
    """The rows the chart shows: one iteration count per benchmark (the given one, else the longest present)."""
    if summary.empty:
        return summary
    if iters is not None:
        rows = summary[summary["iters"] == iters]
        if rows.empty:
            raise InputError(f"no scored runs with iters={iters}; present: {sorted(set(summary['iters']))}")
        return rows.reset_index(drop=True)
    longest = summary.groupby("benchmark")["iters"].transform("max")
    return summary[summary["iters"] == longest].reset_index(drop=True)


def markdown_table(summary) -> str:
    """benchmark (and iterations) x pretraining table of `mean ± std (n)` cells, as Markdown."""
    if summary.empty:
        return "No scored runs.\n"
    arms = _ordered(summary["pretraining"], PRETRAINING_ORDER)
    header = ["benchmark", "iters", *arms]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * len(arms)) + "|"]
    for (benchmark, iters), group in summary.groupby(["benchmark", "iters"], sort=False):
        cells = []
        for arm in arms:
            row = group[group["pretraining"] == arm]
            if row.empty:
                cells.append("–")
                continue
            r = row.iloc[0]
            cell = f"{r['iou_mean']:.3f}"
            if r["runs"] > 1:
                cell += f" ± {r['iou_std']:.3f} ({int(r['runs'])})"
            cells.append(cell)
        lines.append("| " + " | ".join([benchmark, str(iters), *cells]) + " |")
    return "\n".join(lines) + "\n"


def bar_chart(rows, path: str | os.PathLike, title: str = "Test-set IoU by benchmark and pretraining") -> Path:
    """Grouped bars: one group per benchmark, one bar per pretraining, error bars where runs were repeated."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from cellemnet.io import atomic_path

    if rows.empty:
        raise InputError("nothing to plot: no run has a Test_Set_IoU metric")
    benchmarks = _ordered(rows["benchmark"], BENCHMARKS)
    arms = _ordered(rows["pretraining"], PRETRAINING_ORDER)
    width = 0.8 / len(arms)
    x = np.arange(len(benchmarks))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(benchmarks) + 2), 4.5))
    colors = plt.get_cmap("tab10")
    for i, arm in enumerate(arms):
        sub = rows[rows["pretraining"] == arm].set_index("benchmark")
        means = [float(sub.loc[b, "iou_mean"]) if b in sub.index else np.nan for b in benchmarks]
        stds = [float(sub.loc[b, "iou_std"]) if b in sub.index else 0.0 for b in benchmarks]
        ax.bar(x + (i - (len(arms) - 1) / 2) * width, means, width, yerr=stds, capsize=2, label=arm,
               color=colors(i % 10))
    ax.set_xticks(x)
    labels = [f"{b}\n({int(rows[rows['benchmark'] == b]['iters'].iloc[0])} it)" for b in benchmarks]
    ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("Test-set IoU")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncol=min(len(arms), 3), loc="upper center", bbox_to_anchor=(0.5, -0.28))
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=150, format="png")
    plt.close(fig)
    return path


def write_report(
    out_dir: str | os.PathLike = "images",
    tracking_dir: str | os.PathLike | None = None,
    experiments: Iterable[str] | None = None,
    iters: int | None = None,
    chart_name: str = DEFAULT_CHART,
) -> dict:
    """Read the runs, write the CSVs, the Markdown table and the chart into out_dir. Returns paths and counts."""
    import pandas as pd

    from cellemnet.io import atomic_write_text
    from cellemnet.tracking import read_runs

    experiments = list(experiments or [])
    frames = [read_runs(name, tracking_dir) for name in experiments] if experiments else [read_runs(None, tracking_dir)]
    runs = pd.concat([f for f in frames if len(f)], ignore_index=True) if any(len(f) for f in frames) else None
    results = collect_results(runs)
    if results.empty:
        where = os.environ.get("MLFLOW_TRACKING_URI") or tracking_dir or "./mlflow_store"
        raise InputError(f"no fine-tuning run with a {METRIC} metric found in {where}"
                         + (f" (experiments: {', '.join(experiments)})" if experiments else ""))
    summary = summarize(results)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = Path(chart_name).stem
    paths = {
        "runs_csv": out_dir / f"{stem}_runs.csv",
        "csv": out_dir / f"{stem}.csv",
        "markdown": out_dir / f"{stem}.md",
        "chart": out_dir / chart_name,
    }
    atomic_write_text(paths["runs_csv"], results.to_csv(index=False))
    atomic_write_text(paths["csv"], summary.to_csv(index=False, float_format="%.6f"))
    atomic_write_text(paths["markdown"], markdown_table(summary))
    bar_chart(chart_rows(summary, iters), paths["chart"])
    total = 0 if runs is None else len(runs)
    return {"paths": paths, "runs": total, "scored": len(results), "summary": summary}
