"""A real `mlflow server` on 127.0.0.1: fine-tune + inference against it, metrics read back with MlflowClient."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from eval_core_helpers import ROOT, tiny_benchmark, tiny_config

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 90.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.read().decode().strip() == "OK":
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError("mlflow server did not become healthy")


def test_finetune_and_inference_against_a_real_server(tmp_path):
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    proc = subprocess.Popen(
        [str(mlflow_bin), "server", "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp_path / 'srv.db'}",
         "--default-artifact-root", str(tmp_path / "artifacts"), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True,
    )
    try:
        _wait_healthy(url, proc)
        data = tiny_benchmark(tmp_path / "bench", n_test=1)
        cfg = tiny_config(tmp_path / "cfg.yaml", data, iters=1, experiment_name="server_bench")
        run_env = dict(os.environ, MLFLOW_TRACKING_URI=url)
        ft = subprocess.run([sys.executable, str(ROOT / "evaluation" / "finetune.py"), str(cfg)],
                            capture_output=True, text=True, env=run_env, cwd=tmp_path)
        assert ft.returncode == 0, ft.stderr[-2000:]
        state = tmp_path / "models" / "server_bench-random_init_ft_all_epoch1_of_1.pth"
        inf = subprocess.run([sys.executable, str(ROOT / "evaluation" / "inference2d.py"), str(cfg), str(state)],
                             capture_output=True, text=True, env=run_env, cwd=tmp_path)
        assert inf.returncode == 0, inf.stderr[-2000:]
        score = float(inf.stdout.strip().splitlines()[-1].split(": ")[1])

        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=url)
        exp = client.get_experiment_by_name("server_bench")
        runs = client.search_runs([exp.experiment_id])
        assert len(runs) == 1  # Test_Set_IoU went into the training run, not a new one
        run = runs[0]
        assert run.data.metrics["Test_Set_IoU"] == pytest.approx(score, abs=1e-6)
        assert "train_loss" in run.data.metrics and run.data.params["pretraining"] == "random_init"
        assert run.data.params["num_classes"] == "1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
