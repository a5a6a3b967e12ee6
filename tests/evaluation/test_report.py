"""evaluation/report.py on runs logged to a temporary SQLite MLflow store with cellemnet.tracking."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from cellemnet.errors import InputError
from cellemnet.evaluation import report
from cellemnet.tracking import start_run

# (benchmark, pretraining param, iters, Test_Set_IoU or None, tagged like finetune does)
RUNS = [
    ("lucchi_pp", "random_init", 100, 0.70, True),
    ("lucchi_pp", "cellemnet_mocov2", 100, 0.80, True),
    ("lucchi_pp", "cellemnet_mocov2", 100, 0.90, True),  # a repeat: averaged
    ("lucchi_pp", "cellemnet_mocov2", 50, 0.60, True),  # shorter run: in the table, not in the default chart
    ("urocell", "random_init", 100, 0.30, False),  # untagged: labels come from the params
    ("urocell", "{weights}", 100, 0.55, False),  # custom weights file: labelled by its parent folder
    ("urocell", "imagenet_supervised", 100, None, True),  # never scored: left out
]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    base = tmp_path_factory.mktemp("report")
    weights = base / "my_swav_run" / "current.pth.tar"
    weights.parent.mkdir()
    weights.write_bytes(b"")
    tracking = base / "mlflow_store"
    for benchmark, pretraining, iters, score, tagged in RUNS:
        pretraining = pretraining.format(weights=weights)
        params = {"experiment_name": benchmark, "pretraining": pretraining, "iters": iters, "lr_policy": "OneCycle",
                  "finetune_layer": "none"}
        tags = {"benchmark": benchmark, "pretraining": pretraining} if tagged else None
        with start_run(benchmark, params=params, tracking_dir=tracking, tags=tags) as run:
            run.log_metrics({"train_loss": 0.5}, step=1)
            if score is not None:
                run.log_metrics({"Test_Set_IoU": score}, step=0)
    return tracking


def test_collect_and_summarize(store):
    from cellemnet.tracking import read_runs

    results = report.collect_results(read_runs(None, store))
    assert len(results) == 6  # the unscored run is left out
    assert set(results["pretraining"]) == {"random_init", "cellemnet_mocov2", "my_swav_run"}
    summary = report.summarize(results)
    row = summary[(summary.benchmark == "lucchi_pp") & (summary.pretraining == "cellemnet_mocov2")
                  & (summary.iters == 100)].iloc[0]
    assert row.iou_mean == pytest.approx(0.85) and row.runs == 2
    assert row.iou_std == pytest.approx(np.std([0.8, 0.9], ddof=1))
    # paper order: benchmarks as listed, random_init before the CEM weights, custom weights last
    lucchi = summary[(summary.benchmark == "lucchi_pp") & (summary.iters == 100)]
    assert list(lucchi.pretraining) == ["random_init", "cellemnet_mocov2"]
    assert list(summary.benchmark.unique()) == ["lucchi_pp", "urocell"]
    chart = report.chart_rows(summary)
    assert set(chart.iters) == {100}
    assert set(report.chart_rows(summary, iters=50).pretraining) == {"cellemnet_mocov2"}
    with pytest.raises(InputError, match="iters=7"):
        report.chart_rows(summary, iters=7)


def test_markdown_table_cells():
    summary = pd.DataFrame([
        {"benchmark": "cremi", "pretraining": "random_init", "iters": 10, "iou_mean": 0.25, "iou_std": 0.0, "runs": 1},
        {"benchmark": "cremi", "pretraining": "cellemnet_mocov2", "iters": 10, "iou_mean": 0.5, "iou_std": 0.1,
         "runs": 3},
        {"benchmark": "guay", "pretraining": "cellemnet_mocov2", "iters": 10, "iou_mean": 0.7, "iou_std": 0.0,
         "runs": 1},
    ])
    text = report.markdown_table(summary)
    lines = text.strip().splitlines()
    assert lines[0] == "| benchmark | iters | random_init | cellemnet_mocov2 |"
    assert lines[2] == "| cremi | 10 | 0.250 | 0.500 ± 0.100 (3) |"
    assert lines[3] == "| guay | 10 | – | 0.700 |"


def test_report_script_writes_table_and_chart(store, tmp_path, root):
    out = tmp_path / "images"
    result = subprocess.run([sys.executable, str(root / "evaluation" / "report.py"), "--tracking-dir", str(store),
                             "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "6 scored runs of 7" in result.stdout
    assert "| lucchi_pp | 100 | 0.700 | 0.850 ± 0.071 (2) | – |" in result.stdout
    summary = pd.read_csv(out / "benchmark_iou.csv")
    assert len(summary) == 5 and set(summary.columns) >= {"benchmark", "pretraining", "iters", "iou_mean", "runs"}
    runs = pd.read_csv(out / "benchmark_iou_runs.csv")
    assert len(runs) == 6 and runs["run_id"].notna().all()
    assert (out / "benchmark_iou.md").read_text().startswith("| benchmark | iters |")
    from PIL import Image

    with Image.open(out / "benchmark_iou.png") as img:
        assert img.format == "PNG" and img.width > 500 and img.height > 300
        pixels = np.asarray(img.convert("L"))
    assert pixels.std() > 10  # bars drawn, not a blank canvas


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
    assert "no fine-tuning run with a Test_Set_IoU metric" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "o" / "benchmark_iou.png").exists()
