"""evaluation/Snakefile: the job graph for benchmarks x arms x iterations (dry runs), and a real run on a tiny
benchmark."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest
import yaml

pytest.importorskip("snakemake")

TINY_CONFIG = {  # original keys only; a 64-px synthetic benchmark, one iteration, no augmentation
    "experiment_name": "tiny",
    "num_classes": 1,
    "class_names": ["mito"],
    "data_dir": "bench",
    "model_dir": "models/",
    "logging": True,
    "num_save_checkpoints": 1,
    "resume": "",
    "bsz": 1,
    "jobs": 0,
    "finetune_layer": "all",
    "encoder": "resnet50",
    "pretraining": "random_init",
    "iters": 1,
    "num_prints": 1,
    "augmentations": [],
    "test_dir2d": "bench/test2d",
    "threshold2d": 0.5,
    "eval_classes2d": [1],
}


def snakemake(root, workdir, settings: dict, *extra, timeout=120):
    (workdir / "smk.yaml").write_text(yaml.safe_dump(settings))
    cmd = [sys.executable, "-m", "snakemake", "-s", str(root / "evaluation" / "Snakefile"), "--cores", "1",
           "--configfile", "smk.yaml", *extra]
    return subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def configs(tmp_path):
    folder = tmp_path / "configs"
    folder.mkdir()
    (folder / "tiny.yaml").write_text(yaml.safe_dump(TINY_CONFIG))
    both = {**TINY_CONFIG, "experiment_name": "tiny3", "test_dir3d": "bench/test3d", "iters": 7}
    (folder / "tiny3.yaml").write_text(yaml.safe_dump(both))
    return folder


def test_dry_run_covers_benchmarks_arms_custom_weights_and_iterations(tmp_path, configs, root):
    weights = tmp_path / "pretrained" / "mocov2_run1" / "encoder.pth"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"")
    settings = {
        "benchmarks": ["tiny", "tiny3"], "config_dir": str(configs),
        "pretrainings": {"random_init": "all", "cellemnet_mocov2": "none"},
        "custom_weights": {"mine": str(weights)}, "iterations": [1, 2], "output_dir": "runs",
        "data_root": str(tmp_path / "data"), "overrides": ["device=cpu"],
    }
    result = snakemake(root, tmp_path, settings, "-n", "-p")
    assert result.returncode == 0, result.stderr + result.stdout
    out = result.stdout + result.stderr
    counts = dict(re.findall(r"^(finetune|score|report)\s+(\d+)$", out, flags=re.M))
    # 2 benchmarks x 3 arms x 2 iteration counts; tiny scores 2D only, tiny3 (2D and 3D test dirs) both
    assert counts == {"finetune": "12", "score": str(6 * 1 + 6 * 2), "report": "1"}
    # the custom arm trains from the file, frozen encoder, labelled by its parent folder like finetune's checkpoints
    assert re.search(r"finetune\.py \S+tiny\.yaml model_dir=runs/tiny/mine/iters2 iters=2 pretraining=\S+encoder\.pth "
                     r"finetune_layer=none tracking_dir=\S+ data_root=\S+/data device=cpu", out)
    assert "runs/tiny/mine/iters2/tiny-mocov2_run1_ft_none_epoch2_of_2.pth" in out
    assert "runs/tiny/random_init/iters1/tiny-random_init_ft_all_epoch1_of_1.pth" in out
    assert "inference3d.py" in out and "runs/tiny3/cellemnet_mocov2/iters1/predictions_3d/result.json" in out
    assert "report.py" in out and "--experiment tiny --experiment tiny3" in out


def test_user_settings_replace_defaults_and_default_iterations_come_from_the_config(tmp_path, configs, root):
    settings = {"benchmarks": ["tiny3"], "config_dir": str(configs), "pretrainings": {"random_init": "all"},
                "report": False, "inference": {"tiny3": "3d"}}
    result = snakemake(root, tmp_path, settings, "-n", "-p")
    assert result.returncode == 0, result.stderr + result.stdout
    out = result.stdout
    assert "imagenet_supervised" not in out and "cellemnet_mocov2" not in out  # not merged with the defaults
    assert "iters7/tiny3-random_init_ft_all_epoch7_of_7.pth" in out
    assert "inference2d.py" not in out and "report.py" not in out


@pytest.mark.parametrize("settings, message", [
    ({"benchmark": ["tiny"]}, "unknown key 'benchmark'"),
    ({"benchmarks": ["nope"]}, "nope.yaml not found"),
    ({"benchmarks": ["tiny"], "custom_weights": {"x": "missing/w.pth"}}, "weights file not found"),
    ({"benchmarks": ["tiny"], "inference": {"tiny": ["4d"]}}, "'4d' is not one of"),
])
def test_bad_settings_fail_before_anything_runs(tmp_path, configs, root, settings, message):
    result = snakemake(root, tmp_path, {"config_dir": str(configs), **settings}, "-n")
    assert result.returncode != 0
    assert message in result.stdout + result.stderr
    assert not (tmp_path / "snakemake_runs").exists()


@pytest.mark.slow
def test_real_run_on_a_tiny_benchmark(tmp_path, configs, root):
    from cellemnet.synthetic import make_benchmark
    from cellemnet.tracking import read_runs

    make_benchmark(tmp_path / "data" / "bench", n_train=2, n_test=1, n_valid=0, n_test3d=0, shape=(64, 64))
    settings = {"benchmarks": ["tiny"], "config_dir": str(configs), "pretrainings": {"random_init": "all"},
                "iterations": [1], "output_dir": "runs", "tracking_dir": "runs/mlflow_store",
                "data_root": str(tmp_path / "data"), "overrides": ["device=cpu", "save_overlays=0"]}
    result = snakemake(root, tmp_path, settings, timeout=600)
    logs = "\n".join(p.read_text() for p in (tmp_path / "runs").rglob("*.log")) if (tmp_path / "runs").exists() else ""
    assert result.returncode == 0, result.stderr[-3000:] + logs[-3000:]
    run = tmp_path / "runs" / "tiny" / "random_init" / "iters1"
    assert (run / "tiny-random_init_ft_all_epoch1_of_1.pth").is_file()
    from cellemnet.evaluation.infer import read_result

    result_json = read_result(run / "predictions_2d" / "result.json")
    score = result_json["metrics"]["Test_Set_IoU"]
    assert 0.0 <= score <= 1.0 and result_json["kind"] == "2d" and result_json["pretraining"] == "random_init"
    assert result_json["checkpoint"].endswith("tiny-random_init_ft_all_epoch1_of_1.pth")
    runs = read_runs("tiny", tmp_path / "runs" / "mlflow_store")
    assert runs["metrics.Test_Set_IoU"].iloc[0] == pytest.approx(score, abs=1e-5)
    report_md = (tmp_path / "runs" / "report" / "benchmark_iou.md").read_text()
    assert f"| tiny | 1 | {score:.3f} |" in report_md
    assert (tmp_path / "runs" / "report" / "benchmark_iou.png").stat().st_size > 1000
    # a rerun finds everything done
    again = snakemake(root, tmp_path, settings, "-n")
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr


def test_seed_sweep_and_several_protocols_per_pretraining(tmp_path, configs, root):
    settings = {"benchmarks": ["tiny"], "config_dir": str(configs),
                "pretrainings": {"random_init": ["all", "none"]}, "iterations": [3], "seeds": [0, 1],
                "output_dir": "runs", "report": False}
    result = snakemake(root, tmp_path, settings, "-n", "-p")
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    counts = dict(re.findall(r"^(finetune|score)\s+(\d+)$", out, flags=re.M))
    assert counts == {"finetune": "4", "score": "4"}  # 2 protocols x 2 seeds
    for arm, layer in (("random_init_ft_all", "all"), ("random_init_ft_none", "none")):
        for seed in (0, 1):
            run = f"runs/tiny/{arm}/iters3_seed{seed}"
            assert f"{run}/tiny-random_init_ft_{layer}_epoch3_of_3.pth" in out
    assert "seed=0" in out and "seed=1" in out and "finetune_layer=none" in out
