"""The end-to-end demo (`make demo`) at its small size: every stage script runs and the report is complete."""
import json
import subprocess
import sys

import pytest

from cellemnet.demo import ARMS, Arm, find_user_data
from cellemnet.demo_report import compare_arms, conclusion
from cellemnet.errors import InputError


def test_compare_arms_pairs_the_paper_protocol_and_frozen_vs_frozen():
    ious = {"random_e2e": {0: {"2d": 0.8}, 1: {"2d": 0.7}, 2: {"2d": 0.9}},
            "pretrained_frozen": {0: {"2d": 0.75}, 1: {"2d": 0.72}, 2: {"2d": 0.8}},
            "random_frozen": {0: {"2d": 0.6}, 1: {"2d": 0.65}, 2: {"2d": 0.7}}}
    c = compare_arms(ious, ARMS, "2d")
    assert c["paper"]["per_seed"] == pytest.approx({0: -0.05, 1: 0.02, 2: -0.1})
    assert c["paper"]["mean"] == pytest.approx(-0.0433333, abs=1e-6) and c["paper"]["wins"] == 1
    assert c["frozen"]["mean"] == pytest.approx(0.1066667, abs=1e-6) and c["frozen"]["wins"] == 3
    assert c["paper"]["baseline"] == "0.800 ± 0.100" and c["frozen"]["difference"].startswith("+0.107 ± ")
    text = conclusion(c, {"difference_mean": 0.03})
    assert "does not pay off" in text and "ahead of" in text and "+0.030" in text


def test_arms_share_seeds_and_name_their_protocol():
    assert [(a.pretraining, a.finetune_layer) for a in ARMS] == [
        ("random_init", "all"), ("pretrained", "none"), ("random_init", "none")]
    assert len({a.key for a in ARMS}) == len(ARMS) and isinstance(ARMS[0], Arm)


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
    assert last.startswith("report: ") and "Test_Set_IoU 2D random (end to end)" in last and "paired difference" in last
    results = json.loads((out / "results.json").read_text())
    counts = results["counts"]
    assert counts["raw"] >= counts["deduplicated"] >= counts["kept"] > 0
    assert counts["raw"] > counts["kept"]  # the corpus holds blank/noise images the filter must drop
    for arm in ("random_e2e", "pretrained_frozen", "random_frozen"):
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
    assert "the paper's protocol" in report and "random frozen" in report
    log = (out / "logs" / "finetune_pretrained_frozen_seed0.log").read_text()
    assert log.startswith("$ python evaluation/finetune.py")
    assert " ± " in report
    assert "pretraining " in last and ("learned" in last or "DID NOT LEARN" in last)
    assert "mlflow ui" in report
    assert (out / "mlflow_store" / "mlflow.db").is_file()
