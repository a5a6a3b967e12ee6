"""A short fine-tune + inference on a synthetic benchmark: checkpoints, resume, CLI scripts, tracking."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from eval_core_helpers import ROOT, tiny_benchmark, tiny_config

from cellemnet.errors import InputError
from cellemnet.evaluation.config import load_eval_config
from cellemnet.evaluation.infer import run_inference2d, run_inference3d, run_inference_mixed
from cellemnet.evaluation.train import finetune
from cellemnet.tracking import read_runs


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Train once (2 iterations, checkpoints at 1 and 2, the model logged to MLflow) and share the result."""
    base = tmp_path_factory.mktemp("ft")
    data = tiny_benchmark(base / "bench")
    cfg_path = tiny_config(base / "cfg.yaml", data, iters=2, num_save_checkpoints=2, num_prints=2, log_model=True)
    cfg = load_eval_config(cfg_path, stage="train")
    out = finetune(cfg, config_path=str(cfg_path), progress=False)
    return base, cfg_path, cfg, out


def test_checkpoints_named_and_complete(trained):
    base, _, cfg, out = trained
    models = base / "models"
    names = sorted(p.name for p in models.glob("*.pth"))
    assert names == ["example-random_init_ft_all_epoch1_of_2.pth", "example-random_init_ft_all_epoch2_of_2.pth"]
    ckpt = torch.load(models / names[1], map_location="cpu", weights_only=True)  # plain data only
    assert {"state_dict", "optimizer", "scheduler", "norms", "config", "run_id"} <= set(ckpt)
    assert ckpt["run_id"] == out["run_id"] and ckpt["config"]["iters"] == 2 and ckpt["step"] == 2
    assert ckpt["norms"] == {"mean": [0.57287007], "std": [0.12740536]}
    assert not list(models.glob(".*part*"))  # atomic writes leave no temporaries


def test_training_metrics_tracked_over_time(trained):
    base, _, _, out = trained
    runs = read_runs("example", tracking_dir=base / "mlflow_store")
    run = runs[runs.run_id == out["run_id"]].iloc[0]
    assert run["params.lr_policy"] == "OneCycle" and run["params.augmentations"].startswith("[{'aug'")
    from mlflow.tracking import MlflowClient

    history = MlflowClient().get_metric_history(out["run_id"], "train_loss")
    assert [m.step for m in history] == [1, 2]
    logged = {k.split(".", 1)[1] for k in runs.columns if k.startswith("metrics.")}
    assert {"valid_mito_IoU", "train_mito_IoU"} <= logged


def test_the_run_lists_the_model_with_its_signature(trained):
    """log_model (default true): the run's logged model "model", its signature, and the trained weights in it."""
    import mlflow

    from cellemnet.evaluation.model import build_unet_for_inference
    from cellemnet.evaluation.predict import Predictor

    base, _, cfg, out = trained
    runs = read_runs("example", tracking_dir=base / "mlflow_store")  # also points mlflow at that store
    experiment_id = runs[runs.run_id == out["run_id"]].iloc[0]["experiment_id"]
    models = [m for m in mlflow.search_logged_models(experiment_ids=[experiment_id], output_format="list")
              if m.source_run_id == out["run_id"]]
    assert [m.name for m in models] == ["model"]
    info = mlflow.models.get_model_info(models[0].model_uri)
    assert info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"][1:] == (1, 64, 64)
    assert info.signature.outputs.to_dict()[0]["tensor-spec"]["shape"][1:] == (1, 64, 64)
    logged = mlflow.pytorch.load_model(models[0].model_uri)
    ckpt = torch.load(out["checkpoint"], map_location="cpu", weights_only=True)
    unet = build_unet_for_inference(1, 1, cfg["encoder"])
    unet.load_state_dict(ckpt["state_dict"])
    predictor = Predictor(unet, ckpt["norms"], 1, 1, torch.device("cpu"), amp=False)
    x = predictor._prepare(np.full((1, 64, 64), 120, np.uint8))
    with torch.inference_mode():
        assert torch.allclose(logged(x), unet.eval()(x), atol=1e-4)


def test_a_model_that_cannot_be_logged_leaves_the_run_finished(tmp_path, monkeypatch, capsys):
    from cellemnet.tracking import Tracker

    def refuse(*args, **kwargs):
        raise RuntimeError("torch.export cannot trace this")

    monkeypatch.setattr(Tracker, "log_model", refuse)
    cfg = tiny_config(tmp_path / "cfg.yaml", tiny_benchmark(tmp_path / "bench"), iters=1, encoder="resnet18",
                      precise_bn=0, log_model=True)
    out = finetune(load_eval_config(cfg, stage="train"), progress=False)
    assert "WARNING: the model was not logged to MLflow (RuntimeError: torch.export cannot trace this)" in \
        capsys.readouterr().err
    runs = read_runs("example", tracking_dir=tmp_path / "mlflow_store")
    assert runs[runs.run_id == out["run_id"]].iloc[0]["status"] == "FINISHED" and out["checkpoint"]


def test_resume_continues_from_the_saved_step(trained, capsys):
    base, cfg_path, _, _ = trained
    first = base / "models" / "example-random_init_ft_all_epoch1_of_2.pth"
    cfg = load_eval_config(cfg_path, [f"resume={first}", f"model_dir={base / 'resumed'}", "num_save_checkpoints=1"],
                           stage="train")
    out = finetune(cfg, progress=False)
    assert "resuming from" in capsys.readouterr().out
    ckpt = torch.load(out["checkpoint"], map_location="cpu", weights_only=True)
    assert ckpt["step"] == 2 and out["checkpoint"].endswith("epoch2_of_2.pth")
    before = torch.load(first, map_location="cpu", weights_only=True)
    assert ckpt["run_id"] == before["run_id"]  # the same MLflow run goes on
    assert out["seconds"] > 0


def test_inference_2d_3d_and_test_iou_logged_to_training_run(trained):
    base, cfg_path, _, out = trained
    state = base / "models" / "example-random_init_ft_all_epoch2_of_2.pth"
    cfg2 = load_eval_config(cfg_path, [f"save_dir2d={base / 'p2d'}", "tile_size2d=48", "tile_overlap2d=16"],
                            stage="infer2d")
    score2 = run_inference2d(cfg2, state, progress=False)
    assert 0.0 <= score2 <= 1.0
    rows = (base / "p2d" / "iou.csv").read_text().splitlines()
    assert rows[0] == "name,iou_class1,mean_iou" and len(rows) == 3
    pred = np.asarray(__import__("cellemnet.io", fromlist=["read_image"]).read_image(base / "p2d" / "test2d_000.tif"))
    assert pred.shape == (64, 64) and set(np.unique(pred)) <= {0, 1}
    cfg3 = load_eval_config(cfg_path, [f"save_dir3d={base / 'p3d'}", "batch3d=64"], stage="infer3d")
    score3 = run_inference3d(cfg3, state, progress=False)
    assert 0.0 <= score3 <= 1.0 and (base / "p3d" / "iou.csv").is_file()
    # result.json beside the predictions holds what the scripts print, for the demo, the Snakefile and benchmarks
    from cellemnet.evaluation.infer import read_result

    for kind, folder, score in (("2d", "p2d", score2), ("3d", "p3d", score3)):
        result = read_result(base / folder / "result.json")
        assert result["kind"] == kind and result["metrics"]["Test_Set_IoU"] == pytest.approx(score)
        assert result["checkpoint"] == str(state.resolve()) and result["test_sets"][0]["items"] >= 1
    with pytest.raises(InputError, match="p2d/iou.csv: not an inference result"):
        read_result(base / "p2d" / "iou.csv")
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    history = client.get_metric_history(out["run_id"], "Test_Set_IoU")
    assert pytest.approx(history[-1].value) == score3
    arts = [a.path for a in client.list_artifacts(out["run_id"], "test/example")]
    assert "test/example/iou.csv" in arts and "test/example/overlays" in arts


def test_mixed_inference_in_one_process(trained):
    base, cfg_path, _, _ = trained
    bench = base / "bench"
    mixed = base / "mixed"
    (mixed / "2d").mkdir(parents=True)
    (mixed / "3d").mkdir()
    (mixed / "2d" / "sub_a").symlink_to(bench / "test2d")
    (mixed / "3d" / "sub_b").symlink_to(bench / "test3d")
    cfg = load_eval_config(cfg_path, [
        f"test_dir={mixed}", "benchmark_names=[sub_a, sub_b]", "benchmark_dimensions=[2d, 3d]",
        "eval_classes=[1, 1]", "thresholds=[0.5, 0.5]", "instance_match2d=[true, false]",
        "mode3d=[stack, orthoplane]", "mask_prediction3d=[false, false]", f"save_dir2d={base / 'pm'}", "batch3d=64",
    ], stage="mixed")
    state = base / "models" / "example-random_init_ft_all_epoch2_of_2.pth"
    metrics = run_inference_mixed(cfg, state, progress=False)
    assert set(metrics) == {"sub_a_iou", "sub_b_iou", "Test_Set_IoU"}
    assert metrics["Test_Set_IoU"] == pytest.approx((metrics["sub_a_iou"] + metrics["sub_b_iou"]) / 2)
    assert (base / "pm" / "sub_a" / "iou.csv").is_file() and (base / "pm" / "sub_b" / "iou.csv").is_file()


def test_cli_prints_test_set_iou_last_and_errors_are_one_line(trained):
    base, cfg_path, _, _ = trained
    state = base / "models" / "example-random_init_ft_all_epoch2_of_2.pth"
    run = subprocess.run(
        [sys.executable, str(ROOT / "evaluation" / "inference2d.py"), str(cfg_path), str(state), "logging=false",
         f"save_dir2d={base / 'cli'}"], capture_output=True, text=True, cwd=base)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().splitlines()[-1].startswith("Test_Set_IoU: ")
    bad = subprocess.run([sys.executable, str(ROOT / "evaluation" / "finetune.py"), str(cfg_path), "iters=-1"],
                         capture_output=True, text=True, cwd=base)
    assert bad.returncode == 2 and bad.stderr.strip() == f"error: {cfg_path}: key 'iters' must be > 0"
    assert "Traceback" not in bad.stderr


def test_training_on_odd_sized_images_with_validation(tmp_path):
    """Sides that are not multiples of 32 (the original's validation crashed): padded, scored, saved."""
    from eval_core_helpers import write_png

    rng = np.random.default_rng(0)
    for split, n in (("train", 2), ("valid", 1)):
        for i in range(n):
            img = rng.integers(0, 256, (50, 70), dtype=np.uint8)
            write_png(tmp_path / "d" / split / "images" / f"{i}.png", img)
            write_png(tmp_path / "d" / split / "masks" / f"{i}.png", ((img > 128) * 255).astype(np.uint8))
    cfg_path = tiny_config(tmp_path / "c.yaml", tmp_path / "d", iters=1, augmentations=[], logging=False)
    out = finetune(load_eval_config(cfg_path, stage="train"), progress=False)
    assert 0.0 <= out["metrics"]["valid_mito_IoU"] <= 1.0
    assert out["checkpoint"].endswith("epoch1_of_1.pth")


@pytest.mark.slow
def test_torchrun_two_cpu_processes(tmp_path):
    """DDP on the CPU (gloo): two processes, one checkpoint with plain (unwrapped) parameter names."""
    data = tiny_benchmark(tmp_path / "bench")
    cfg = tiny_config(tmp_path / "cfg.yaml", data, iters=1, bsz=1, logging=False)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    run = subprocess.run([*torchrun, str(ROOT / "evaluation" / "finetune.py"), str(cfg)],
                         capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    ckpts = list((tmp_path / "models").glob("*.pth"))
    assert [p.name for p in ckpts] == ["example-random_init_ft_all_epoch1_of_1.pth"]
    state = torch.load(ckpts[0], map_location="cpu", weights_only=True)["state_dict"]
    assert "encoder.conv1.weight" in state and not any(k.startswith("module.") for k in state)
