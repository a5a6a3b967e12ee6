"""The end-to-end demo (`make demo`) at its small size: every stage script runs and the report is complete."""
import json
import subprocess
import sys

import pytest

from cellemnet.demo import parse_test_iou, find_user_data
from cellemnet.errors import CellEMNetError, InputError


def test_parse_test_iou_takes_the_last_line():
    assert parse_test_iou("x\nTest_Set_IoU: 0.25\nTest_Set_IoU: 0.5\n") == 0.5
    with pytest.raises(CellEMNetError):
        parse_test_iou("no score here")


def test_user_data_layouts(tmp_path):
    (tmp_path / "images2d" / "projA").mkdir(parents=True)
    assert find_user_data(tmp_path) == (tmp_path / "images2d", None)
    with pytest.raises(InputError, match="must be a folder"):
        find_user_data(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="found neither"):
        find_user_data(empty)


@pytest.mark.slow
def test_small_demo_end_to_end(tmp_path, root):
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "cellemnet.demo", "--size", "small", "--out", str(out)],
                          cwd=root, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("report: ") and "Test_Set_IoU 2D random" in last and "paired difference" in last
    results = json.loads((out / "results.json").read_text())
    counts = results["counts"]
    assert counts["raw"] >= counts["deduplicated"] >= counts["kept"] > 0
    assert counts["raw"] > counts["kept"]  # the corpus holds blank/noise images the filter must drop
    for arm in ("random_init", "pretrained"):
        assert len(results["iou"][arm]) >= 2  # several seeds per arm
        for per_seed in results["iou"][arm].values():
            for kind in ("2d", "3d"):
                assert 0.0 <= per_seed[kind] <= 1.0
    assert results["verdict"] is not None and "learned" in results["verdict"]
    assert set(results["probe"]) >= {"encoder_mean", "random_mean", "difference_mean"}
    report = (out / "report.md").read_text()
    for figure in ("curation_montage.png", "pretraining_loss.png", "pretraining_health.png", "iou.png",
                   "predictions.png"):
        assert (out / "figures" / figure).stat().st_size > 1000, figure
        assert figure in report
    assert "**Verdict:" in report and "paired difference" in report and "Probe IoU" in report
    assert " ± " in report
    assert "pretraining " in last and ("learned" in last or "DID NOT LEARN" in last)
    assert "mlflow ui" in report
    assert (out / "mlflow_store" / "mlflow.db").is_file()
