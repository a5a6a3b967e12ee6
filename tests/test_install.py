"""The project installed as a wheel, outside the checkout: every console command answers --help, and a tiny pipeline
(patchify -> pretrain 1 step -> export the encoder -> fine-tune 2 steps -> inference -> export the model -> predict)
runs from a folder that is not the checkout, with the configs found in the installed package by name; predict
segments the volume with the checkpoint and with its package, alike.

The fresh venv gets the wheel (built here with `pip wheel --no-deps`, installed with `--no-deps`, not editable) and
sees the third-party packages of the venv running this test through a `.pth` file that holds that venv's
site-packages path as one plain line. Why: installing torch, mlflow and the rest into a new venv costs minutes and
needs the registry. A path line is added to sys.path without processing the .pth files found there, so the editable
install of cellemnet in the test's own venv (its `__editable__` .pth and finder) stays out: `cellemnet` can only come
from the wheel, which the test asserts.
"""
from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # a wheel, a venv, ~26 --help calls and five pipeline steps: ~1.5 minutes on 2 cores


def console_scripts() -> dict[str, str]:
    """[project.scripts]: command -> 'module:function'."""
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def module_exists(target: str) -> bool:
    module = target.split(":")[0]
    return (ROOT / (module.replace(".", "/") + ".py")).is_file()


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """(bin folder of a fresh venv holding the wheel, the environment to run its commands in)."""
    base = tmp_path_factory.mktemp("install")
    # no PYTHONPATH (a checkout on it would look installed to pip) and no tracking URI of the caller's
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MLFLOW_TRACKING_URI")}
    env.update({"OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg", "NO_ALBUMENTATIONS_UPDATE": "1", "HF_HUB_OFFLINE": "1"})
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(base / "wheel"), str(ROOT)], capture_output=True, text=True, timeout=300,
                           env=env, cwd=base)
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = (base / "wheel").glob("cellemnet-*.whl")
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (Path(site) / "cellemnet_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q",
                              str(wheel)], capture_output=True, text=True, timeout=300, env=env, cwd=base)
    assert install.returncode == 0, install.stderr[-2000:]
    where = subprocess.run([str(python), "-c", "import cellemnet; print(cellemnet.__file__)"], capture_output=True,
                           text=True, env=env, cwd=base)
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout + where.stderr  # the wheel's, not ours
    return venv / "bin", env


def test_every_command_is_installed_and_answers_help(installed, tmp_path):
    bin_dir, env = installed
    commands = console_scripts()
    assert {"cellemnet-patchify3d", "cellemnet-train-mocov2", "cellemnet-finetune", "cellemnet-export-model",
            "cellemnet-predict"} <= set(commands)
    scripts = sorted(p.stem for d in ("dataset", "pretraining", "evaluation") for p in (ROOT / d).rglob("*.py"))
    assert sorted(t.split(":")[0].rsplit(".", 1)[1] for t in commands.values()) == scripts  # one per stage script
    assert all(module_exists(target) for target in commands.values())
    present = list(commands)
    assert all((bin_dir / name).is_file() for name in commands)

    def help_of(name: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(bin_dir / name), "--help"], capture_output=True, text=True, env=env, cwd=tmp_path,
                              timeout=300)

    with ThreadPoolExecutor(max_workers=2) as pool:
        for name, proc in zip(present, pool.map(help_of, present)):
            assert proc.returncode == 0, f"{name}: {proc.stderr[-1500:]}"
            assert "usage:" in proc.stdout, name


def test_tiny_pipeline_runs_from_a_folder_outside_the_checkout(installed, tmp_path):
    from cellemnet.io import open_volume, write_volume
    from cellemnet.synthetic import make_benchmark, make_volume

    bin_dir, env = installed
    work = tmp_path / "work"
    assert not work.is_relative_to(ROOT)
    volume, _ = make_volume((8, 160, 160), seed=0)
    write_volume(work / "volumes" / "cells.nrrd", volume)
    make_benchmark(work / "bench", n_train=2, n_test=1, shape=(96, 96), n_valid=0, n_test3d=0)

    def run(command: str, *args: str) -> str:
        proc = subprocess.run([str(bin_dir / command), *args], capture_output=True, text=True, env=env, cwd=work,
                              timeout=600)
        assert proc.returncode == 0, f"{command}: {(proc.stdout + proc.stderr)[-3000:]}"
        return proc.stdout

    run("cellemnet-patchify3d", "volumes", "patches", "-cs", "64", "-q")
    assert (work / "patches" / "manifest.csv").is_file()
    # a shipped config by name (found in the installed package), one step on the CPU
    run("cellemnet-train-mocov2", "mocov2_small.yaml", "data_path=patches", "model_dir=pretrain", "batch_size=8",
        "workers=0", "epochs=1", "moco_k=8", "health_every=0", "health_patches=8", "allow_unsafe_ssl=true",
        "logging=false", "device=cpu")
    run("cellemnet-export-encoder", "pretrain/current.pth", "encoder.pth", "--force")  # 1 step did not learn
    fine_tune = ["data_root=.", "data_dir=bench", "test_dir2d=bench/test2d", "encoder=resnet18",
                 "pretraining=encoder.pth", "finetune_layer=none", "iters=2", "bsz=2", "precise_bn=0",
                 "augmentations=[]", "model_dir=models", "tracking_dir=mlflow_store", "log_model=false",
                 "save_overlays=0", "device=cpu"]
    out = run("cellemnet-finetune", "evaluation/configs/example.yaml", *fine_tune)  # the README's path works too
    (checkpoint,) = (work / "models").glob("example-*_epoch2_of_2.pth")
    assert f"checkpoint: {checkpoint.relative_to(work)}" in out
    out = run("cellemnet-inference2d", "example.yaml", str(checkpoint), *fine_tune)
    assert out.strip().splitlines()[-1].startswith("Test_Set_IoU: ")
    # predict segments the volume with the checkpoint, and with its bioimage.io package: the same labels
    run("cellemnet-export-model", str(checkpoint), "package", "--no-test")
    segmented = {}
    for name, model in (("checkpoint", str(checkpoint)), ("package", "package")):
        out = run("cellemnet-predict", model, "volumes/cells.nrrd", f"{name}.ome.zarr", "output=labels", "mode=stack",
                  "device=cpu", "progress=false")
        assert (work / f"{name}.ome.zarr").is_dir(), out
        with open_volume(work / f"{name}.ome.zarr") as reader:
            segmented[name] = np.asarray(reader[:])
    assert segmented["checkpoint"].shape == volume.shape
    np.testing.assert_array_equal(segmented["package"], segmented["checkpoint"])
