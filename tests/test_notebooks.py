"""Every notebook in notebooks/ runs top to bottom in the project's venv, and is stored with its outputs cleared."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
CELL_TIMEOUT_S = 300
KERNEL_CHECK = "import sys; print('KERNEL-PYTHON=' + sys.executable)"
# Notebooks read ../shared/data through this variable and fall back to cellemnet.synthetic without it.
DATA_ENV = "CELLEMNET_EXAMPLE_DATA"
# The weights the notebooks study: a file when set, else a random-init ResNet-50 / a built stand-in checkpoint.
WEIGHTS_ENVS = ("CELLEMNET_ENCODER", "CELLEMNET_CHECKPOINT")
# check_benchmarks only skips a section without the data; the others switch to synthetic inputs.
VARIANT_NOTEBOOKS = [p for p in NOTEBOOKS if p.stem != "check_benchmarks"
                     and any(env in p.read_text() for env in (DATA_ENV, *WEIGHTS_ENVS))]


def _tracked_notebooks() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "notebooks/*.ipynb"], cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:  # not a git checkout (e.g. an unpacked release): check what is there
        return NOTEBOOKS
    return [ROOT / line for line in out.stdout.splitlines() if line.strip()]


def _execute(path: Path, monkeypatch) -> nbformat.NotebookNode:
    """Run a copy of the notebook in notebooks/ (as a user would); raises CellExecutionError on a failing cell."""
    from nbclient import NotebookClient

    # The kernel inherits this environment (offline switches from conftest); inline figures as a user sees them.
    monkeypatch.delenv("MPLBACKEND", raising=False)
    monkeypatch.setenv("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    before = sorted(os.listdir(NOTEBOOK_DIR))
    nb = nbformat.read(path, as_version=4)
    nb.cells.insert(0, nbformat.v4.new_code_cell(KERNEL_CHECK))
    NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK_DIR)}}).execute()
    printed = "".join(o.get("text", "") for o in nb.cells[0].outputs)
    kernel_python = printed.split("KERNEL-PYTHON=", 1)[1].strip()
    assert Path(kernel_python).resolve() == Path(sys.executable).resolve(), "the kernel is not the venv's python"
    assert sorted(os.listdir(NOTEBOOK_DIR)) == before, f"{path.name} left files in notebooks/"
    return nb


def _printed(nb) -> str:
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)


def test_the_notebooks_are_there():
    names = {p.stem for p in NOTEBOOKS}
    assert {"pretrained_weights", "deduplication_and_filtering", "featuremap_correlation", "invariances",
            "occlusion_analysis", "check_benchmarks"} <= names
    assert len(VARIANT_NOTEBOOKS) >= 5


@pytest.mark.parametrize("path", _tracked_notebooks(), ids=lambda p: p.stem)
def test_notebook_is_stored_with_cleared_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    dirty = [i for i, c in enumerate(nb.cells)
             if c.cell_type == "code" and (c.get("outputs") or c.get("execution_count") is not None)]
    assert not dirty, f"{path.name}: cells {dirty} have outputs or execution counts; clear them before committing"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(path, monkeypatch):
    monkeypatch.delenv(DATA_ENV, raising=False)  # the default: ../../shared/data when it is there
    nb = _execute(path, monkeypatch)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.get("output_type") == "error"]
    assert not errors


@pytest.fixture(scope="session")
def encoder_file(tmp_path_factory) -> Path:
    """An exported encoder (random weights, seed 1) made through the export contract, as a user would have."""
    import torch

    from cellemnet.analysis import resnet50_encoder
    from cellemnet.encoder import encoder_from_checkpoint

    state = {f"module.encoder_q.{k}": v for k, v in resnet50_encoder(1, seed=1).state_dict().items()}
    path = tmp_path_factory.mktemp("weights") / "encoder.pth"
    torch.save(encoder_from_checkpoint({"state_dict": state, "norms": [0.5, 0.15]}), path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("path", VARIANT_NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_on_synthetic_data_with_an_encoder_file(path, monkeypatch, tmp_path, encoder_file):
    """The other branch of every switch: no ../shared/data (synthetic inputs) and a weights file given."""
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "no-shared-data-here"))
    for env in WEIGHTS_ENVS:
        monkeypatch.setenv(env, str(encoder_file))
    nb = _execute(path, monkeypatch)
    printed = _printed(nb)
    if DATA_ENV in path.read_text():
        assert "synthetic" in printed
    if "CELLEMNET_ENCODER" in path.read_text():
        assert "encoder.pth" in printed  # the file's encoder was used (and named), not only random init


def _make_figures_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_figures", ROOT / "images" / "make_figures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_curated_patches_figure_runs_the_curation_library_on_synthetic_data(tmp_path):
    figures = _make_figures_module()
    groups = figures.curated_patch_groups(figures._synthetic_patch_pool(seed=0), seed=0, n_failures=6)
    counts = groups["counts"]
    assert counts["patches"] > counts["exemplars"] >= counts["kept"] > 0  # something de-duplicated, something kept
    assert len(groups["duplicates"]) == counts["patches"] - counts["exemplars"]
    assert len(groups["uninformative"]) == counts["exemplars"] - counts["kept"] >= 1
    assert all(score <= 0.5 for _, score in groups["uninformative"])
    path = figures.draw_curated_patches(tmp_path, data=tmp_path / "no-shared-data")
    assert path == tmp_path / "curated_patches.png" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_check_benchmarks_reads_a_named_benchmark_from_the_data_root(monkeypatch, tmp_path):
    """The notebook finds a set-up benchmark through its benchmark module and $CELLEMNET_DATA_ROOT."""
    from cellemnet.synthetic import make_benchmark

    bench = tmp_path / "root" / "lucchi_pp"
    make_benchmark(bench, n_train=3, n_test=2, shape=(96, 96), n_valid=0, n_test3d=0)
    (bench / "test2d").rename(bench / "test")  # lucchi_pp's test folder in the layout
    monkeypatch.setenv("CELLEMNET_DATA_ROOT", str(tmp_path / "root"))
    monkeypatch.setenv("CELLEMNET_BENCHMARK", "lucchi_pp")
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "no-shared-data-here"))
    printed = _printed(_execute(NOTEBOOK_DIR / "check_benchmarks.ipynb", monkeypatch))
    assert "benchmark lucchi_pp under" in printed
    assert str(bench / "test") in printed and "no ISBI 2012 data" in printed
