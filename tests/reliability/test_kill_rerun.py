"""SIGKILL a curation command at several points, re-run it, and compare with a run that was never interrupted
(issue "Reliability", item 7). Pretraining and fine-tuning have the same test beside their own
(tests/pretraining/test_train.py, tests/evaluation/test_eval_seeding.py); patchify3d, with and without -p 2, in
tests/dataset/test_patchify.py.

Kill points are chosen by what the killed run has written so far (the first output file, half of them), not by
time alone, so each point is inside the work whatever the machine's speed.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cellemnet.dataset import store
from cellemnet.io import read_image, write_image

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _images(root: Path, groups: int = 4, per_group: int = 3, side: int = 448) -> Path:
    from cellemnet.synthetic import make_image

    for g in range(groups):
        for i in range(per_group):
            write_image(root / f"group{g}" / f"img{i}.png", make_image((side, side), seed=100 * g + i)[0])
    return root


def _shards(folder: Path) -> dict:
    """Every shard's patch names and pixels (hashed), and the manifest text: what a curation output is."""
    out = {}
    for shard in store.list_shards(folder, recursive=True):
        data = store.load_shard(shard)
        out[shard.relative_to(folder).as_posix()] = (
            list(data["names"]), hashlib.sha256(np.ascontiguousarray(data["patches"]).tobytes()).hexdigest())
    manifest = folder / store.MANIFEST_NAME
    out["manifest"] = manifest.read_text() if manifest.is_file() else None
    return out


def _tiffs(folder: Path) -> dict:
    """The curated dataset: every visible file's path and pixels, and the manifest; no leftovers of killed writes."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    out = {p.relative_to(folder).as_posix(): hashlib.sha256(read_image(p).tobytes()).hexdigest()
           for p in files if p.suffix == ".tiff"}
    out["manifest"] = (folder / "filter_manifest.csv").read_text()
    out["leftovers"] = sorted(p.name for p in folder.rglob(".*part*"))
    return out


def _kill_when(cmd: list, ready, timeout: float = 120) -> bool:
    """Start cmd, SIGKILL it as soon as ready() holds; False when it finished first (nothing to test there)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + timeout
    while proc.poll() is None and not ready() and time.time() < deadline:
        time.sleep(0.005)
    finished = proc.poll() is not None
    proc.kill()
    proc.wait()
    return not finished


def _rerun(cmd: list) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _count(folder: Path, pattern: str) -> int:
    return sum(1 for p in folder.rglob(pattern) if not p.name.startswith(".")) if folder.is_dir() else 0


def test_patchify2d_killed_at_the_first_and_middle_shard_then_rerun_equals_a_clean_run(tmp_path):
    images = _images(tmp_path / "images")
    script = [sys.executable, str(ROOT / "dataset/patchify2d.py"), str(images)]
    clean = tmp_path / "clean"
    _rerun(script + [str(clean), "-cs", "64", "-q"])
    expected = _shards(clean)
    interrupted = 0
    for point in (1, 2):  # after the first shard; after half of the four
        out = tmp_path / f"killed{point}"
        cmd = script + [str(out), "-cs", "64", "-q"]
        interrupted += _kill_when(cmd, lambda: _count(out, "*.h5") >= point)
        _rerun(cmd)
        assert _shards(out) == expected
        assert not list(out.glob(".*part*"))
    assert interrupted >= 1  # at least one kill landed inside the work


def test_dedupe_killed_while_rewriting_shards_then_rerun_equals_a_clean_run(tmp_path):
    images = tmp_path / "images"
    for g in range(4):  # groups that share images: cross-shard duplicates for dedupe to drop
        for i in range(3):
            src = (g + i) % 5
            from cellemnet.synthetic import make_image

            write_image(images / f"group{g}" / f"img{src}.png", make_image((448, 448), seed=src)[0])
    base = tmp_path / "base"
    _rerun([sys.executable, str(ROOT / "dataset/patchify2d.py"), str(images), str(base), "-cs", "64", "-q"])
    dedupe = [sys.executable, str(ROOT / "dataset/dedupe.py")]
    clean = tmp_path / "clean"
    shutil.copytree(base, clean)
    _rerun(dedupe + [str(clean), "-q"])
    expected = _shards(clean)
    assert expected != _shards(base)  # dedupe did drop patches: there is work to interrupt
    before = {p.name: p.stat().st_mtime_ns for p in base.glob("*.h5")}
    interrupted = 0
    for point in (1, 2):  # after the first rewritten shard; after two
        out = tmp_path / f"killed{point}"
        shutil.copytree(base, out)

        def rewritten() -> int:
            return sum(1 for name, t in before.items() if (out / name).is_file() and
                       (out / name).stat().st_mtime_ns != t) if out.is_dir() else 0

        interrupted += _kill_when(dedupe + [str(out), "-q"], lambda: rewritten() >= point)
        _rerun(dedupe + [str(out), "-q"])
        assert _shards(out) == expected
    assert interrupted >= 1


def test_classify_patches_killed_mid_dataset_then_rerun_equals_a_clean_run(tmp_path):
    images = _images(tmp_path / "images", groups=3)
    shards = tmp_path / "shards"
    _rerun([sys.executable, str(ROOT / "dataset/patchify2d.py"), str(images), str(shards), "-cs", "64", "-q"])
    classify = [sys.executable, str(ROOT / "dataset/classify_patches.py"), str(shards)]
    clean = tmp_path / "clean"
    _rerun(classify + [str(clean), "--no-progress"])
    expected = _tiffs(clean)
    total = len([k for k in expected if k.endswith(".tiff")])
    assert total > 10
    interrupted = 0
    for point in (1, total // 2):
        out = tmp_path / f"killed{point}"
        cmd = classify + [str(out), "--no-progress"]
        interrupted += _kill_when(cmd, lambda: _count(out, "*.tiff") >= point)
        _rerun(cmd)
        assert _tiffs(out) == expected
    assert interrupted >= 1
