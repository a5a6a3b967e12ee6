"""evaluation/report.py on runs logged to a temporary SQLite MLflow store with cellemnet.tracking."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from cellemnet.errors import InputError
from cellemnet.evaluation import report
from cellemnet.tracking import start_run

# (benchmark, pretraining param, iters, Test_Set_IoU or None, tagged like finetune does, seed, finetune_layer)
RUNS = [
    ("lucchi_pp", "random_init", 100, 0.70, True, 0, "all"),
    ("lucchi_pp", "random_init", 100, 0.60, True, 1, "all"),
    ("lucchi_pp", "cellemnet_mocov2", 100, 0.80, True, 0, "none"),
    ("lucchi_pp", "cellemnet_mocov2", 100, 0.90, True, 1, "none"),
    ("lucchi_pp", "cellemnet_mocov2", 100, 0.90, True, 1, "none"),  # seed 1 again: the same sample, not a third
    ("lucchi_pp", "cellemnet_mocov2", 50, 0.60, True, 0, "none"),  # shorter run: in the table, not in the default chart
    ("lucchi_pp", "random_init", 100, 0.50, True, 0, "none"),  # frozen random encoder: frozen vs frozen
    ("urocell", "random_init", 100, 0.30, False, None, "all"),  # untagged, no seed param (older runs)
    ("urocell", "{weights}", 100, 0.55, False, None, "none"),  # custom weights file: labelled by its parent folder
    ("urocell", "imagenet_supervised", 100, None, True, 0, "none"),  # never scored: left out
]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    base = tmp_path_factory.mktemp("report")
    weights = base / "my_swav_run" / "current.pth.tar"
    weights.parent.mkdir()
    weights.write_bytes(b"")
    tracking = base / "mlflow_store"
    for benchmark, pretraining, iters, score, tagged, seed, layer in RUNS:
        pretraining = pretraining.format(weights=weights)
        params = {"experiment_name": benchmark, "pretraining": pretraining, "iters": iters, "lr_policy": "OneCycle",
                  "finetune_layer": layer}
        if seed is not None:
            params["seed"] = seed
        tags = {"benchmark": benchmark, "pretraining": pretraining} if tagged else None
        with start_run(benchmark, params=params, tracking_dir=tracking, tags=tags) as run:
            run.log_metrics({"train_loss": 0.5}, step=1)
            if score is not None:
                run.log_metrics({"Test_Set_IoU": score}, step=0)
    return tracking


def test_summarise_arms_mean_sd_over_seeds_and_paired_differences():
    rows = [{"arm": "random_init", "finetune_layer": "all", "seed": s, "iou": v}
            for s, v in [(0, .5), (1, .6), (2, .7)]]
    rows += [{"arm": "mine", "finetune_layer": "none", "seed": s, "iou": v} for s, v in [(2, .9), (0, .6), (1, .6)]]
    rows += [{"arm": "mine", "finetune_layer": "none", "seed": 1, "iou": .6},  # a rerun of seed 1: one sample
             {"arm": "mine", "finetune_layer": "none", "seed": 3, "iou": .2},  # no random_init partner: unpaired
             {"arm": "random_init", "finetune_layer": "none", "seed": 0, "iou": .4},
             {"arm": "other", "seed": 0, "iou": float("nan")}]  # unscored: no arm
    out = report.summarise_arms(rows, metric="iou")
    arms = {a["label"]: a for a in out["arms"]}
    assert list(arms) == ["random_init [all]", "random_init [none]", "mine [none]"]
    assert arms["random_init [all]"]["mean"] == pytest.approx(0.6) and arms["random_init [all]"]["n"] == 3
    assert arms["random_init [all]"]["sd"] == pytest.approx(0.1)
    assert arms["mine [none]"]["seeds"] == [0, 1, 2, 3] and arms["mine [none]"]["n"] == 4
    assert arms["random_init [none]"]["sd"] is None  # one seed: no spread
    diffs = {(d["label"], d["baseline_label"]): d for d in out["differences"]}
    assert set(diffs) == {("mine [none]", "random_init [all]"), ("mine [none]", "random_init [none]")}
    paper = diffs[("mine [none]", "random_init [all]")]
    assert paper["per_seed"] == pytest.approx({0: 0.1, 1: 0.0, 2: 0.2})
    assert paper["n"] == 3 and paper["mean"] == pytest.approx(0.1) and paper["sd"] == pytest.approx(0.1)
    assert paper["wins"] == 2  # strictly higher: seeds 0 and 2 (seed 1 is a tie)
    frozen = diffs[("mine [none]", "random_init [none]")]
    assert frozen["per_seed"] == pytest.approx({0: 0.2}) and frozen["sd"] is None


def test_summarise_arms_never_pairs_unseeded_runs():
    rows = [{"arm": "random_init", "seed": None, "Test_Set_IoU": 0.5}, {"arm": "a", "seed": None, "Test_Set_IoU": 0.7},
            {"arm": "a", "seed": None, "Test_Set_IoU": 0.7}]
    out = report.summarise_arms(rows)
    assert [a["n"] for a in out["arms"]] == [1, 2]  # unseeded runs each count on their own
    assert out["differences"] == []


def test_collect_and_summarize(store):
    from cellemnet.tracking import read_runs

    results = report.collect_results(read_runs(None, store))
    assert len(results) == 9  # the unscored run is left out
    assert set(results["pretraining"]) == {"random_init", "cellemnet_mocov2", "my_swav_run"}
    assert sorted(s for s in results["seed"] if s is not None) == [0, 0, 0, 0, 1, 1, 1]
    summary = report.summarize(results)
    row = summary[(summary.benchmark == "lucchi_pp") & (summary.arm == "cellemnet_mocov2 [none]")
                  & (summary.iters == 100)].iloc[0]
    assert row.iou_mean == pytest.approx(0.85) and row.runs == 2 and row.seeds == "0 1"
    assert row.iou_std == pytest.approx(np.std([0.8, 0.9], ddof=1))
    # paper order: benchmarks as listed, random_init (end to end, then frozen) before the CEM weights, custom last
    lucchi = summary[(summary.benchmark == "lucchi_pp") & (summary.iters == 100)]
    assert list(lucchi.arm) == ["random_init [all]", "random_init [none]", "cellemnet_mocov2 [none]"]
    assert list(summary.benchmark.unique()) == ["lucchi_pp", "urocell"]
    chart = report.chart_rows(summary)
    assert set(chart.iters) == {100}
    assert set(report.chart_rows(summary, iters=50).pretraining) == {"cellemnet_mocov2"}
    with pytest.raises(InputError, match="iters=7"):
        report.chart_rows(summary, iters=7)
    paired = report.paired_differences(results)
    assert list(zip(paired.arm, paired.baseline)) == [("cellemnet_mocov2 [none]", "random_init [all]"),
                                                      ("cellemnet_mocov2 [none]", "random_init [none]")]
    first = paired.iloc[0]
    assert first.pairs == 2 and first.diff_mean == pytest.approx(0.2) and first.wins == 2
    assert first.per_seed == "0:+0.1000 1:+0.3000"
    assert paired.iloc[1].pairs == 1 and paired.iloc[1].diff_mean == pytest.approx(0.3)


def test_markdown_table_cells():
    summary = pd.DataFrame([
        {"benchmark": "cremi", "pretraining": "random_init", "finetune_layer": "all", "arm": "random_init [all]",
         "iters": 10, "iou_mean": 0.25, "iou_std": 0.0, "runs": 1, "seeds": "0"},
        {"benchmark": "cremi", "pretraining": "cellemnet_mocov2", "finetune_layer": "none",
         "arm": "cellemnet_mocov2 [none]", "iters": 10, "iou_mean": 0.5, "iou_std": 0.1, "runs": 3, "seeds": "0 1 2"},
        {"benchmark": "guay", "pretraining": "cellemnet_mocov2", "finetune_layer": "none",
         "arm": "cellemnet_mocov2 [none]", "iters": 10, "iou_mean": 0.7, "iou_std": 0.0, "runs": 1, "seeds": "0"},
    ])
    paired = pd.DataFrame([{"benchmark": "cremi", "iters": 10, "arm": "cellemnet_mocov2 [none]",
                            "baseline": "random_init [all]", "pairs": 1, "diff_mean": 0.25, "diff_std": None,
                            "wins": 1, "per_seed": "0:+0.2500"}])
    text = report.markdown_table(summary, paired)
    lines = text.strip().splitlines()
    assert lines[0] == "| benchmark | iters | random_init [all] | cellemnet_mocov2 [none] |"
    assert lines[2] == "| cremi | 10 | 0.250 | 0.500 ± 0.100 (3) |"
    assert lines[3] == "| guay | 10 | – | 0.700 |"
    assert "frozen encoder" in text
    assert "| cremi | 10 | cellemnet_mocov2 [none] | random_init [all] | 1 | +0.250 | 1/1 | 0:+0.2500 |" in lines


def test_report_script_writes_table_and_chart(store, tmp_path, root):
    out = tmp_path / "images"
    result = subprocess.run([sys.executable, str(root / "evaluation" / "report.py"), "--tracking-dir", str(store),
                             "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "9 scored runs of 10" in result.stdout
    assert "| lucchi_pp | 100 | 0.650 ± 0.071 (2) | 0.500 | 0.850 ± 0.071 (2) | – |" in result.stdout
    row = "| lucchi_pp | 100 | cellemnet_mocov2 [none] | random_init [all] | 2 | +0.200 ± 0.141 | 2/2 |"
    assert row in result.stdout
    summary = pd.read_csv(out / "benchmark_iou.csv")
    assert len(summary) == 6 and set(summary.columns) >= {"benchmark", "pretraining", "finetune_layer", "arm", "iters",
                                                          "iou_mean", "runs"}
    paired = pd.read_csv(out / "benchmark_iou_paired.csv")
    assert len(paired) == 2 and paired.loc[0, "diff_mean"] == pytest.approx(0.2)
    runs = pd.read_csv(out / "benchmark_iou_runs.csv")
    assert len(runs) == 9 and runs["run_id"].notna().all()
    assert (out / "benchmark_iou.md").read_text().startswith("| benchmark | iters |")
    from PIL import Image

    with Image.open(out / "benchmark_iou.png") as img:
        assert img.format == "PNG" and img.width > 500 and img.height > 300
        pixels = np.asarray(img.convert("L"))
    assert pixels.std() > 10  # bars drawn, not a blank canvas


def test_bar_chart_draws_through_grouped_bars_with_sd_error_bars(monkeypatch, tmp_path):
    rows = pd.DataFrame([
        {"benchmark": "urocell", "iters": 50, "pretraining": "random_init", "finetune_layer": "all",
         "arm": "random_init [all]", "iou_mean": 0.4, "iou_std": 0.0, "runs": 1},
        {"benchmark": "lucchi_pp", "iters": 100, "pretraining": "random_init", "finetune_layer": "all",
         "arm": "random_init [all]", "iou_mean": 0.6, "iou_std": 0.05, "runs": 3},
        {"benchmark": "lucchi_pp", "iters": 100, "pretraining": "cellemnet_mocov2", "finetune_layer": "none",
         "arm": "cellemnet_mocov2 [none]", "iou_mean": 0.8, "iou_std": 0.02, "runs": 3},
    ])
    calls = []
    real = report.figures.grouped_bars
    monkeypatch.setattr(report.figures, "grouped_bars", lambda *a, **k: calls.append((a, k)) or real(*a, **k))
    path = report.bar_chart(rows, tmp_path / "chart.png")
    assert path.is_file() and len(calls) == 1
    (values, _), kwargs = calls[0]
    assert list(values) == ["lucchi_pp\n(100 it)", "urocell\n(50 it)"]  # the registry's order, iterations shown
    assert values["lucchi_pp\n(100 it)"] == {"random_init [all]": 0.6, "cellemnet_mocov2 [none]": 0.8}
    assert kwargs["errors"]["lucchi_pp\n(100 it)"] == {"random_init [all]": 0.05, "cellemnet_mocov2 [none]": 0.02}
    assert kwargs["series"] == ["random_init [all]", "cellemnet_mocov2 [none]"] and kwargs["rotate"] == 30
    with pytest.raises(InputError, match="nothing to plot"):
        report.bar_chart(rows.iloc[0:0], tmp_path / "empty.png")


def test_one_experiment_only(store, tmp_path):
    result = report.write_report(out_dir=tmp_path / "o", tracking_dir=store, experiments=["urocell"],
                                 chart_name="uro.png")
    assert result["scored"] == 2
    assert (tmp_path / "o" / "uro.png").is_file() and (tmp_path / "o" / "uro.csv").is_file()


def test_empty_store_is_a_clear_error(tmp_path, root):
    result = subprocess.run([sys.executable, str(root / "evaluation" / "report.py"), "--tracking-dir",
                             str(tmp_path / "empty"), "--out", str(tmp_path / "o")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "empty: no MLflow store here (no mlflow.db)" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "o" / "benchmark_iou.png").exists()
    assert not (tmp_path / "empty").exists()  # a reader creates no store where it was pointed


def test_a_store_without_scored_runs_is_a_clear_error(tmp_path, root):
    from cellemnet.tracking import tracking_uri

    tracking_uri(tmp_path / "fresh")  # what a training run does first: the store exists, with no runs
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(tmp_path / "fresh"))
    mlflow.search_experiments()  # creates the tables
    result = subprocess.run([sys.executable, str(root / "evaluation" / "report.py"), "--tracking-dir",
                             str(tmp_path / "fresh"), "--out", str(tmp_path / "o")],
                            capture_output=True, text=True, timeout=300, env={**os.environ, "MLFLOW_TRACKING_URI": ""})
    assert result.returncode == 2
    assert "no fine-tuning run with a Test_Set_IoU metric" in result.stderr and "Traceback" not in result.stderr
