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
# check_benchmarks only skips a section without the data; the others switch to synthetic inputs.
FALLBACK_NOTEBOOKS = [p for p in NOTEBOOKS if DATA_ENV in p.read_text() and p.stem != "check_benchmarks"]


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
    assert len(FALLBACK_NOTEBOOKS) >= 4


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


@pytest.mark.slow
@pytest.mark.parametrize("path", FALLBACK_NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_on_synthetic_data_without_shared_data(path, monkeypatch, tmp_path):
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "no-shared-data-here"))
    nb = _execute(path, monkeypatch)
    assert "synthetic" in _printed(nb)


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
