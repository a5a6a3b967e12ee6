"""Benchmark report from MLflow: test IoU per benchmark and arm over seeds, paired differences, a bar chart.

Every fine-tuning run that has a `Test_Set_IoU` metric counts. Its benchmark is the run's `benchmark` tag (or the
`experiment_name` param), its pretraining the `pretraining` tag (or the label made from the `pretraining` param the
way checkpoint names are made), its training length the `iters` param (`epochs` for MultiStep), its seed the
`seed` param. An *arm* is a pretraining with its protocol, the `finetune_layer` (the paper's: pretrained encoders
frozen, `none`, against random init trained end to end, `all`; frozen random init, `random_init [none]`, is an arm
too). Per (benchmark, iterations) each arm gets the mean ± sd over its seeds, and every other arm the paired
difference to each random_init arm: arm minus random_init, seed by seed (`summarise_arms`, which takes plain
records and needs no MLflow). Runs repeated with one seed are one sample (seeded runs are identical); runs
without a seed each count on their own and are never paired.

Outputs: `benchmark_iou_runs.csv` (one row per run), `benchmark_iou.csv` (the per-arm summary),
`benchmark_iou_paired.csv` (the paired differences), `benchmark_iou.md` (a benchmark x arm table and the paired
differences) and a grouped bar chart (`benchmark_iou.png`). The chart shows, per benchmark, the longest training
present unless an iteration count is chosen.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from cellemnet import figures
from cellemnet.errors import InputError
from cellemnet.evaluation.benchmarks import BENCHMARKS
from cellemnet.evaluation.weights import checkpoint_label
from cellemnet.io import atomic_write_text
from cellemnet.tracking import read_runs

METRIC = "Test_Set_IoU"
# Arms in the paper's order; custom weight files follow, alphabetically.
PRETRAINING_ORDER = ("random_init", "imagenet_supervised", "imagenet_mocov2", "cellemnet_mocov2", "cellemnet_swav")
DEFAULT_CHART = "benchmark_iou.png"
BASELINE = "random_init"
# Protocols in order: end to end first (random init's in the paper), frozen (pretrained encoders' in the paper).
LAYER_ORDER = ("all", "layer1", "layer2", "layer3", "layer4", "none", "")


# ---------------------------------------------------------------------------------------------- arms over seeds
def _mean_sd(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (ddof 1; None for fewer than two values)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def _per_seed(records: Iterable[Mapping[str, Any]], metric: str) -> list[tuple[Any, float]]:
    """(seed, value) samples of one arm: runs repeated with one seed averaged into one; unseeded runs kept apart."""
    by_seed: dict[Any, list[float]] = {}
    unseeded: list[float] = []
    for r in records:
        value = r.get(metric)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        seed = r.get("seed")
        if seed is None:
            unseeded.append(float(value))
        else:
            by_seed.setdefault(int(seed), []).append(float(value))
    out: list[tuple[Any, float]] = [(seed, sum(v) / len(v)) for seed, v in sorted(by_seed.items())]
    return out + [(None, v) for v in unseeded]


def summarise_arms(rows: Iterable[Mapping[str, Any]], metric: str = METRIC, baseline: str = BASELINE) -> dict:
    """Per-arm mean/sd/n over seeds and paired per-seed differences to the baseline arm(s); plain data in and out.

    rows: records {"arm": name, "seed": int or None, metric: value, optionally "finetune_layer": protocol}.
    An arm is (arm, finetune_layer). Returns
      {"arms": [{"arm", "finetune_layer", "label", "n", "mean", "sd", "seeds", "values"}, ...],
       "differences": [{"arm", "finetune_layer", "label", "baseline", "baseline_finetune_layer",
                        "baseline_label", "n", "mean", "sd", "wins", "per_seed": {seed: arm - baseline}}, ...]}
    sd is None below two samples. Differences pair the seeds both arms have, arm minus baseline, for every
    non-baseline arm against every arm named `baseline` (one per protocol present); `wins` counts seeds where
    the arm scored higher. Arms come in the paper's order (PRETRAINING_ORDER, then by name; protocols as
    LAYER_ORDER).
    """
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault((str(r["arm"]), str(r.get("finetune_layer") or "")), []).append(r)
    arms, samples = [], {}
    for key in ordered_arms(groups):
        per_seed = _per_seed(groups[key], metric)
        if not per_seed:
            continue
        samples[key] = per_seed
        mean, sd = _mean_sd([v for _, v in per_seed])
        arms.append({"arm": key[0], "finetune_layer": key[1], "label": arm_label(*key), "n": len(per_seed),
                     "mean": mean, "sd": sd, "seeds": [s for s, _ in per_seed],
                     "values": [v for _, v in per_seed]})
    differences = []
    for key, per_seed in samples.items():
        if key[0] == baseline:
            continue
        mine = {s: v for s, v in per_seed if s is not None}
        for base_key, base_samples in samples.items():
            if base_key[0] != baseline:
                continue
            theirs = {s: v for s, v in base_samples if s is not None}
            common = sorted(set(mine) & set(theirs))
            if not common:
                continue
            diffs = {s: mine[s] - theirs[s] for s in common}
            mean, sd = _mean_sd(list(diffs.values()))
            differences.append({
                "arm": key[0], "finetune_layer": key[1], "label": arm_label(*key), "baseline": base_key[0],
                "baseline_finetune_layer": base_key[1], "baseline_label": arm_label(*base_key), "n": len(common),
                "mean": mean, "sd": sd, "wins": sum(d > 0 for d in diffs.values()), "per_seed": diffs,
            })
    return {"arms": arms, "differences": differences}


def ordered_arms(keys: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """(pretraining, finetune_layer) keys in the paper's order: PRETRAINING_ORDER then by name; LAYER_ORDER."""
    keys = list(dict.fromkeys(keys))
    names = _ordered([a for a, _ in keys], PRETRAINING_ORDER)

    def rank(key: tuple[str, str]) -> tuple[int, int, str]:
        layer_rank = LAYER_ORDER.index(key[1]) if key[1] in LAYER_ORDER else len(LAYER_ORDER)
        return names.index(key[0]), layer_rank, key[1]

    return sorted(keys, key=rank)


def _arm_labels(frame) -> list[str]:
    """The arm labels of a summary frame (columns pretraining, finetune_layer), in the paper's order."""
    keys = ordered_arms(zip(frame["pretraining"], frame["finetune_layer"]))
    return [arm_label(*k) for k in keys]


def arm_label(pretraining: str, finetune_layer: str = "") -> str:
    """'cellemnet_mocov2 [none]': the pretraining and, when known, its finetune_layer (none = frozen encoder)."""
    return f"{pretraining} [{finetune_layer}]" if finetune_layer else pretraining


def _first_present(*values):
    for v in values:
        if v is not None and not (isinstance(v, float) and math.isnan(v)) and str(v) != "":
            return v
    return None


def pretraining_label(value: str) -> str:
    """Named arms as they are; a weights file as its checkpoint label (parent folder name, as the checkpoints)."""
    return checkpoint_label(value)


def collect_results(runs) -> "pd.DataFrame":  # noqa: F821
    """MLflow runs (a DataFrame from cellemnet.tracking.read_runs) -> one row per scored run.

    Columns: benchmark, pretraining, iters, finetune_layer, seed (None when not logged), run_id, Test_Set_IoU.
    Runs without the metric (unfinished, or never scored) are left out.
    """
    import pandas as pd

    columns = ["benchmark", "pretraining", "iters", "finetune_layer", "seed", "run_id", METRIC]
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
        seed = _first_present(run.get("params.seed"))
        rows.append({
            "benchmark": str(benchmark),
            "pretraining": str(pretraining),
            "iters": int(float(length)) if length is not None else -1,
            "finetune_layer": str(_first_present(run.get("params.finetune_layer")) or ""),
            "seed": int(float(seed)) if seed is not None else None,
            "run_id": run.get("run_id"),
            METRIC: float(score),
        })
    out = pd.DataFrame(rows, columns=columns)
    out["seed"] = out["seed"].astype(object).where(out["seed"].notna(), None)
    return out


def _ordered(values: Iterable[str], preferred: tuple[str, ...]) -> list[str]:
    values = list(dict.fromkeys(values))
    known = [v for v in preferred if v in values]
    return known + sorted(v for v in values if v not in preferred)


SUMMARY_COLUMNS = ["benchmark", "iters", "pretraining", "finetune_layer", "arm", "iou_mean", "iou_std", "runs",
                   "seeds"]
PAIRED_COLUMNS = ["benchmark", "iters", "arm", "baseline", "pairs", "diff_mean", "diff_std", "wins", "per_seed"]


def _records(group) -> list[dict[str, Any]]:
    return [{"arm": r["pretraining"], "finetune_layer": r["finetune_layer"], "seed": r["seed"], METRIC: r[METRIC]}
            for _, r in group.iterrows()]


def _benchmark_groups(results):
    """(benchmark, iters, rows) in the registry's benchmark order (others after, by name), shorter training first."""
    order = _ordered(results["benchmark"], tuple(BENCHMARKS))
    keys = sorted({(b, int(i)) for b, i in zip(results["benchmark"], results["iters"])},
                  key=lambda k: (order.index(k[0]), k[1]))
    for benchmark, iters in keys:
        yield benchmark, iters, results[(results["benchmark"] == benchmark) & (results["iters"] == iters)]


def summarize(results) -> "pd.DataFrame":  # noqa: F821
    """Per (benchmark, iters, arm): mean, standard deviation (0 for one sample), sample count and seeds of the
    test IoU, over seeds (see summarise_arms)."""
    import pandas as pd

    rows = []
    for benchmark, iters, group in _benchmark_groups(results):
        for arm in summarise_arms(_records(group))["arms"]:
            rows.append({
                "benchmark": benchmark, "iters": iters, "pretraining": arm["arm"],
                "finetune_layer": arm["finetune_layer"], "arm": arm["label"], "iou_mean": arm["mean"],
                "iou_std": arm["sd"] if arm["sd"] is not None else 0.0, "runs": arm["n"],
                "seeds": " ".join(str(s) for s in arm["seeds"] if s is not None),
            })
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def paired_differences(results) -> "pd.DataFrame":  # noqa: F821
    """Per (benchmark, iters): each arm minus each random_init arm, paired by seed (see summarise_arms)."""
    import pandas as pd

    rows = []
    for benchmark, iters, group in _benchmark_groups(results):
        for d in summarise_arms(_records(group))["differences"]:
            rows.append({
                "benchmark": benchmark, "iters": iters, "arm": d["label"], "baseline": d["baseline_label"],
                "pairs": d["n"], "diff_mean": d["mean"], "diff_std": d["sd"], "wins": d["wins"],
                "per_seed": " ".join(f"{s}:{v:+.4f}" for s, v in d["per_seed"].items()),
            })
    return pd.DataFrame(rows, columns=PAIRED_COLUMNS)


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


def markdown_table(summary, paired=None) -> str:
    """benchmark (and iterations) x arm table of `mean ± sd (n)` cells, as Markdown; with `paired`, the paired
    differences below it."""
    if summary.empty:
        return "No scored runs.\n"
    arms = _arm_labels(summary)
    header = ["benchmark", "iters", *arms]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * len(arms)) + "|"]
    for (benchmark, iters), group in summary.groupby(["benchmark", "iters"], sort=False):
        cells = []
        for arm in arms:
            row = group[group["arm"] == arm]
            if row.empty:
                cells.append("–")
                continue
            r = row.iloc[0]
            cell = f"{r['iou_mean']:.3f}"
            if r["runs"] > 1:
                cell += f" ± {r['iou_std']:.3f} ({int(r['runs'])})"
            cells.append(cell)
        lines.append("| " + " | ".join([benchmark, str(iters), *cells]) + " |")
    text = "\n".join(lines) + "\n"
    if any("[" in a for a in arms):
        text += ("\nArms are `pretraining [finetune_layer]`: `none` trains only the decoder (frozen encoder, the "
                 "paper's protocol for pretrained encoders), `all` the whole network (the paper's random init).\n")
    if paired is not None and not paired.empty:
        text += ("\nPaired by seed (arm minus baseline, same seed):\n\n"
                 "| benchmark | iters | arm | minus | seeds | difference | arm higher | per seed |\n"
                 "|---|---|---|---|---:|---:|---:|---|\n")
        for _, d in paired.iterrows():
            diff = f"{d['diff_mean']:+.3f}"
            if d["diff_std"] is not None and not (isinstance(d["diff_std"], float) and math.isnan(d["diff_std"])):
                diff += f" ± {d['diff_std']:.3f}"
            text += (f"| {d['benchmark']} | {d['iters']} | {d['arm']} | {d['baseline']} | {int(d['pairs'])} | {diff} "
                     f"| {int(d['wins'])}/{int(d['pairs'])} | {d['per_seed']} |\n")
    return text


def bar_chart(rows, path: str | os.PathLike, title: str = "Test-set IoU by benchmark and arm") -> Path:
    """Grouped bars: one group per benchmark, one bar per arm (pretraining [finetune_layer]), error bars (sd over
    seeds) where runs were repeated."""
    if rows.empty:
        raise InputError("nothing to plot: no run has a Test_Set_IoU metric")
    arms = _arm_labels(rows)
    values: dict[str, dict[str, float]] = {}
    errors: dict[str, dict[str, float]] = {}
    for benchmark in _ordered(rows["benchmark"], tuple(BENCHMARKS)):
        sub = rows[rows["benchmark"] == benchmark]
        label = f"{benchmark}\n({int(sub['iters'].iloc[0])} it)"
        values[label] = dict(zip(sub["arm"], sub["iou_mean"].astype(float)))
        errors[label] = dict(zip(sub["arm"], sub["iou_std"].astype(float)))
    return figures.grouped_bars(values, path, ylabel="Test-set IoU", title=title, errors=errors, rotate=30,
                                series=arms)


def write_report(
    out_dir: str | os.PathLike = "images",
    tracking_dir: str | os.PathLike | None = None,
    experiments: Iterable[str] | None = None,
    iters: int | None = None,
    chart_name: str = DEFAULT_CHART,
) -> dict:
    """Read the runs, write the CSVs, the Markdown table and the chart into out_dir. Returns paths and counts."""
    import pandas as pd

    experiments = list(experiments or [])
    frames = [read_runs(name, tracking_dir) for name in experiments] if experiments else [read_runs(None, tracking_dir)]
    runs = pd.concat([f for f in frames if len(f)], ignore_index=True) if any(len(f) for f in frames) else None
    results = collect_results(runs)
    if results.empty:
        where = os.environ.get("MLFLOW_TRACKING_URI") or tracking_dir or "./mlflow_store"
        raise InputError(f"no fine-tuning run with a {METRIC} metric found in {where}"
                         + (f" (experiments: {', '.join(experiments)})" if experiments else ""))
    summary = summarize(results)
    paired = paired_differences(results)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = Path(chart_name).stem
    paths = {
        "runs_csv": out_dir / f"{stem}_runs.csv",
        "csv": out_dir / f"{stem}.csv",
        "paired_csv": out_dir / f"{stem}_paired.csv",
        "markdown": out_dir / f"{stem}.md",
        "chart": out_dir / chart_name,
    }
    atomic_write_text(paths["runs_csv"], results.to_csv(index=False))
    atomic_write_text(paths["csv"], summary.to_csv(index=False, float_format="%.6f"))
    atomic_write_text(paths["paired_csv"], paired.to_csv(index=False, float_format="%.6f"))
    atomic_write_text(paths["markdown"], markdown_table(summary, paired))
    bar_chart(chart_rows(summary, iters), paths["chart"])
    total = 0 if runs is None else len(runs)
    return {"paths": paths, "runs": total, "scored": len(results), "summary": summary, "paired": paired}
