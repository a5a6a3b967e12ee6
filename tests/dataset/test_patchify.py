"""patchify2d / patchify3d end to end: tiling, names, lossless shards, manifest, resume, bad files, axis rules."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from curation_scripts import ROOT, load_script

from cellemnet.dataset import store
from cellemnet.dataset.hashing import dhash, dhash_reference
from cellemnet.dataset.names import parse_name
from cellemnet.io import read_image, to_uint8, write_image, write_volume
from cellemnet.workers import live_children, still_alive_after

P2 = load_script("patchify2d.py")
P3 = load_script("patchify3d.py")


def _smooth(shape, seed):
    """A textured image whose tiles differ clearly (dHash sees them as distinct)."""
    rng = np.random.default_rng(seed)
    from scipy.ndimage import gaussian_filter

    noise = gaussian_filter(rng.normal(size=shape), sigma=3)
    return to_uint8(noise)


def _shard_contents(folder: Path) -> dict:
    out = {}
    for shard in store.list_shards(folder):
        data = store.load_shard(shard)
        out[shard.name] = (data["names"], [p.tobytes() for p in data["patches"]], data["hashes"].tolist(),
                           data["metadata"])
    return out


def _check_manifest_against_shards(folder: Path) -> list[dict]:
    rows = store.read_manifest(folder / "manifest.csv")
    kept = {r["name"] for r in rows if r["status"] == "kept"}
    names = set()
    for shard in store.list_shards(folder):
        names |= set(store.ShardReader(shard).names)
    assert kept == names
    by_name = {r["name"]: r for r in rows}
    for r in rows:
        if r["status"] == "duplicate":
            assert by_name[r["duplicate_of"]]["status"] == "kept"
            dist = bin(int(r["hash"], 16) ^ int(by_name[r["duplicate_of"]]["hash"], 16)).count("1")
            assert dist <= 12
        else:
            assert r["duplicate_of"] == ""
    return rows


# ------------------------------------------------------------------------------------------------ 2D


def _make_groups(root: Path):
    a = root / "imgs" / "projA"
    b = root / "imgs" / "projB"
    a.mkdir(parents=True)
    b.mkdir(parents=True)
    base = _smooth((180, 200), 1)
    write_image(a / "one.png", base)
    write_image(a / "two.png", np.clip(base.astype(int) + 2, 0, 255).astype(np.uint8))  # near duplicate
    write_image(a / "wide.tif", (_smooth((70, 300), 2).astype(np.uint16) * 200))  # 16-bit
    write_image(b / "three.png", _smooth((64, 64), 3))
    (b / "notes.txt").write_text("not an image")
    return root / "imgs"


def test_patchify2d_groups_names_manifest_and_dedup(tmp_path, capsys):
    imdir = _make_groups(tmp_path)
    out = tmp_path / "out"
    assert P2.main([str(imdir), str(out), "-cs", "64", "-q"]) == 0
    summary = capsys.readouterr().out
    assert "2 done" in summary
    assert sorted(p.name for p in store.list_shards(out)) == ["projA.h5", "projB.h5"]
    rows = _check_manifest_against_shards(out)
    # grids: 180x200 -> 3x3 (round(2.8)=3, round(3.1)=3); 70x300 -> 1x5; 64x64 -> 1
    by_source = {}
    for r in rows:
        by_source.setdefault(Path(r["source"]).name, []).append(r)
    assert {k: len(v) for k, v in by_source.items()} == {"one.png": 9, "two.png": 9, "wide.tif": 5, "three.png": 1}
    two = [r for r in by_source["two.png"]] + [r for r in by_source["one.png"]]
    assert sum(r["status"] == "duplicate" for r in two) == 9  # the near-duplicate image collapses onto the other
    edge = [r for r in by_source["one.png"] if r["y0"] == "128" and r["x0"] == "128"][0]
    assert (edge["y1"], edge["x1"], edge["axis"], edge["slice"]) == ("180", "192", "2d", "")  # y: border; x: 8 px left
    shard = store.load_shard(out / "projA.h5")
    assert shard["metadata"]["kind"] == "images" and shard["metadata"]["crop_size"] == 64
    for name, patch, h in zip(shard["names"], shard["patches"], shard["hashes"]):
        loc = parse_name(name)
        files = {"one": "one.png", "two": "two.png", "wide": "wide.tif"}
        image = to_uint8(read_image(imdir / "projA" / files[loc.source]))
        assert np.array_equal(patch, image[loc.y0 : loc.y1, loc.x0 : loc.x1])
        assert int(h) == dhash(patch, 64) == dhash_reference(patch, 64)


def test_patchify2d_only_cuts_the_named_groups_and_names_an_unknown_one(tmp_path, capsys):
    imdir = _make_groups(tmp_path)
    assert P2.main([str(imdir), str(tmp_path / "b"), "-cs", "64", "-q", "--only", "projB"]) == 0
    assert [p.name for p in store.list_shards(tmp_path / "b")] == ["projB.h5"]
    assert P2.main([str(imdir), str(tmp_path / "c"), "-q", "--only", "projC"]) == 2
    err = capsys.readouterr().err
    assert "--only projC: no such source in" in err and "(found: projA, projB)" in err
    assert not (tmp_path / "c").exists() or not store.list_shards(tmp_path / "c")


def test_patchify2d_bad_image_is_named_and_others_finish(tmp_path, capsys):
    imdir = _make_groups(tmp_path)
    (imdir / "projA" / "broken.png").write_bytes(b"\x89PNG garbage")
    (imdir / "projB" / "empty.tif").write_bytes(b"")
    out = tmp_path / "out"
    assert P2.main([str(imdir), str(out), "-cs", "64", "-q"]) == 1
    text = capsys.readouterr().out
    assert "broken.png" in text and "empty.tif" in text
    assert "2 done" in text
    assert len(store.ShardReader(out / "projB.h5")) == 1
    # a re-run skips the shards but still reports what was left out
    assert P2.main([str(imdir), str(out), "-cs", "64", "-q"]) == 1
    text = capsys.readouterr().out
    assert "2 skipped" in text and "broken.png" in text


def test_patchify2d_loose_images_form_a_group_and_missing_dir_fails(tmp_path, capsys):
    folder = tmp_path / "loose"
    folder.mkdir()
    write_image(folder / "a.png", _smooth((64, 64), 5))
    out = tmp_path / "out"
    assert P2.main([str(folder), str(out), "-cs", "64", "-q"]) == 0
    assert [p.name for p in store.list_shards(out)] == ["loose.h5"]
    assert P2.main([str(tmp_path / "nope"), str(out), "-q"]) == 2
    assert "nope" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ 3D


def _volume(shape=(40, 100, 130), seed=0):
    return _smooth(shape, seed)


def test_patchify3d_axes_grid_every_slice_and_lossless_patches(tmp_path):
    vol = _volume()
    voldir = tmp_path / "vols"
    write_volume(voldir / "cube.nrrd", vol, spacing=(5.0, 5.0, 5.0))
    out = tmp_path / "out"
    assert P3.main([str(voldir), str(out), "-cs", "64", "-q"]) == 0
    rows = _check_manifest_against_shards(out)
    counts = {a: sum(r["axis"] == a for r in rows) for a in "012"}
    # axis 0: 40 slices x (2 x 2); axis 1: 100 y-slices x (1 x 2); axis 2: 130 x-slices x (1 x 2)
    assert counts == {"0": 160, "1": 200, "2": 260}
    assert sorted({int(r["slice"]) for r in rows if r["axis"] == "0"}) == list(range(40))  # last slice used
    shard = store.load_shard(out / "cube.h5")
    assert shard["metadata"]["spacing"] == [5.0, 5.0, 5.0] and shard["metadata"]["cut_axes"] == [0, 1, 2]
    assert 0 < len(shard["names"]) < len(rows)
    for name, patch in zip(shard["names"], shard["patches"]):
        loc = parse_name(name)
        section = np.take(vol, loc.slice, axis=loc.axis)  # axis 1: (z, x); axis 2: (z, y)
        assert np.array_equal(patch, section[loc.y0 : loc.y1, loc.x0 : loc.x1])
    kept = {r["name"]: r for r in rows if r["status"] == "kept"}
    for name, patch in list(zip(shard["names"], shard["patches"]))[::7]:
        assert int(kept[name]["hash"], 16) == dhash_reference(patch, 64)


@pytest.mark.parametrize(
    "name,spacing,shape,expected_axes",
    [
        ("aniso.nrrd", (8.0, 4.0, 4.0), (40, 100, 130), {"0"}),  # z 100 % off x: xy only
        ("slight.nrrd", (4.8, 4.0, 4.0), (40, 100, 130), {"0", "1", "2"}),  # 20 % off: all axes
        ("cell_video.nrrd", (1.0, 1.0, 1.0), (40, 100, 130), {"0"}),
        ("thin.nrrd", (1.0, 1.0, 1.0), (20, 100, 130), {"0"}),  # 20 < 64/2: cross sections skipped
    ],
)
def test_patchify3d_axis_rules(tmp_path, name, spacing, shape, expected_axes):
    write_volume(tmp_path / "v" / name, _volume(shape), spacing=spacing)
    out = tmp_path / "out"
    assert P3.main([str(tmp_path / "v"), str(out), "-cs", "64", "-q"]) == 0
    rows = store.read_manifest(out / "manifest.csv")
    assert {r["axis"] for r in rows} == expected_axes


def test_patchify3d_spacing_and_axes_options(tmp_path):
    write_volume(tmp_path / "v" / "a.tif", _volume((40, 100, 130)))
    out = tmp_path / "out"
    assert P3.main([str(tmp_path / "v"), str(out), "-cs", "64", "-a", "0", "2", "-s", "3", "-q"]) == 0
    rows = store.read_manifest(out / "manifest.csv")
    assert {r["axis"] for r in rows} == {"0", "2"}
    assert sorted({int(r["slice"]) for r in rows if r["axis"] == "0"}) == list(range(0, 40, 3))
    assert sorted({int(r["slice"]) for r in rows if r["axis"] == "2"}) == list(range(0, 130, 3))


def test_lazy_hdf5_float_volume_matches_in_memory_file(tmp_path):
    rng = np.random.default_rng(0)
    vol = (_volume((24, 90, 90)).astype(np.float32) - 100.0) / 7.0
    vol += rng.normal(0, 0.01, (24, 90, 90)).astype(np.float32)
    write_volume(tmp_path / "a" / "vol.nrrd", vol)
    write_volume(tmp_path / "b" / "vol.h5:/raw", vol)
    assert P3.main([str(tmp_path / "a"), str(tmp_path / "oa"), "-cs", "48", "-q"]) == 0
    assert P3.main([str(tmp_path / "b" / "vol.h5") + ":/raw", str(tmp_path / "ob"), "-cs", "48", "-q"]) == 0
    a = store.load_shard(tmp_path / "oa" / "vol.h5")
    b = store.load_shard(tmp_path / "ob" / "vol_raw.h5")
    assert [n.replace("vol-LOC", "") for n in a["names"]] == [n.replace("vol_raw-LOC", "") for n in b["names"]]
    assert all(np.array_equal(x, y) for x, y in zip(a["patches"], b["patches"]))


def test_patchify3d_bad_files_named_others_finish(tmp_path, capsys):
    voldir = tmp_path / "v"
    write_volume(voldir / "good.nrrd", _volume((30, 70, 70)))
    (voldir / "empty.nrrd").write_bytes(b"")
    (voldir / "garbage.mrc").write_bytes(b"\x00" * 100)
    write_volume(voldir / "tiny.tif", np.zeros((5, 10, 10), np.uint8))  # nothing to cut at crop size 64
    out = tmp_path / "out"
    assert P3.main([str(voldir), str(out), "-cs", "64", "-q"]) == 1
    text = capsys.readouterr().out
    for bad in ("empty.nrrd", "garbage.mrc", "tiny.tif"):
        assert sum(bad in line and line.startswith("error:") for line in text.splitlines()) == 1
    assert "1 done" in text and "3 failed" in text
    assert [p.name for p in store.list_shards(out)] == ["good.h5"]


def test_resume_skips_complete_redoes_partial_and_equals_clean_run(tmp_path, capsys):
    voldir = tmp_path / "v"
    for i in range(3):
        write_volume(voldir / f"vol{i}.nrrd", _volume((24, 70, 70), seed=i))
    clean = tmp_path / "clean"
    assert P3.main([str(voldir), str(clean), "-cs", "48", "-q"]) == 0
    expected = _shard_contents(clean)
    expected_manifest = (clean / "manifest.csv").read_text()

    work = tmp_path / "work"
    shutil.copytree(clean, work)
    (work / "vol1.h5").unlink()  # never finished
    (work / ".vol1.h5.x1y2.part.h5").write_bytes(b"half a shard")  # what a killed write leaves
    data = (work / "vol2.h5").read_bytes()
    (work / "vol2.h5").write_bytes(data[: len(data) // 3])  # damaged
    (work / "manifest.csv").write_text("stale")
    capsys.readouterr()
    assert P3.main([str(voldir), str(work), "-cs", "48", "-q"]) == 0
    assert "2 done, 1 skipped" in capsys.readouterr().out
    assert _shard_contents(work) == expected
    assert (work / "manifest.csv").read_text() == expected_manifest
    assert not list(work.glob(".*part*"))
    # other settings on an existing output: refused, with the shard named
    assert P3.main([str(voldir), str(work), "-cs", "64", "-q"]) == 1
    assert "vol0.h5: made with other settings" in capsys.readouterr().out


@pytest.mark.slow
def test_sigkill_with_and_without_workers_then_rerun_equals_clean_run_and_no_process_survives(tmp_path):
    voldir = tmp_path / "v"
    for i in range(4):
        write_volume(voldir / f"vol{i}.nrrd", _volume((48, 120, 120), seed=i))
    cmd = [sys.executable, str(ROOT / "dataset" / "patchify3d.py"), str(voldir)]
    clean = tmp_path / "clean"
    subprocess.run(cmd + [str(clean), "-cs", "48", "-q"], check=True, capture_output=True)
    for workers in (["-p", "1"], ["-p", "2"]):
        killed = tmp_path / f"killed{workers[1]}"
        proc = subprocess.Popen(cmd + [str(killed), "-cs", "48", "-q", *workers], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        children: set[int] = set()
        wanted = 3 if workers[1] == "2" else 0  # 2 workers + the resource tracker
        # without workers: kill once the first shard is written; with them: once both workers and the tracker run
        while time.time() < deadline and proc.poll() is None and (
                len(children) < wanted if wanted else not (killed / "vol0.h5").exists()):
            children |= live_children(proc.pid)
            time.sleep(0.02)
        if wanted:
            time.sleep(1.0)  # the workers are inside a volume now
            assert proc.poll() is None and len(children) >= 2, "patchify3d -p 2 did not start its workers"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert still_alive_after(children, 20) == []  # no process outlives the killed parent
        rerun = subprocess.run(cmd + [str(killed), "-cs", "48", "-q", *workers], capture_output=True, text=True)
        assert rerun.returncode == 0, rerun.stdout + rerun.stderr
        assert _shard_contents(killed) == _shard_contents(clean)  # the same with and without workers
        assert (killed / "manifest.csv").read_text() == (clean / "manifest.csv").read_text()


# ------------------------------------------------------------------------------------------------ real data


@pytest.mark.shared_data
def test_real_data_isbi_group_isbi_volume_cryoet_and_cem_examples(shared_data, tmp_path):
    imdir = tmp_path / "images"
    imdir.mkdir()
    (imdir / "isbi").symlink_to(shared_data / "isbi2012" / "train" / "images")
    (imdir / "cem").symlink_to(shared_data / "cem-examples" / "occlusion")
    assert P2.main([str(imdir), str(tmp_path / "o2"), "-q"]) == 0
    rows2 = _check_manifest_against_shards(tmp_path / "o2")
    isbi_rows = [r for r in rows2 if Path(r["source"]).parent.name == "isbi"]
    assert len(isbi_rows) == 30 * 4  # 512 x 512 -> 2 x 2 tiles (round(512/224) = 2, 64-pixel strip left out)
    cem = store.load_shard(tmp_path / "o2" / "cem.h5")
    assert len(cem["names"]) == 10  # one tile each, some are real edge patches (224 x 138, 224 x 200)
    for name, patch in zip(cem["names"], cem["patches"]):
        source = shared_data / "cem-examples" / "occlusion" / (parse_name(name).source + ".tiff")
        assert np.array_equal(patch, read_image(source))
    assert cem["names"][0] == "example0-LOC-2d-0-224_0-224"

    slices = [read_image(p) for p in sorted((shared_data / "isbi2012" / "train" / "images").glob("*.png"))]
    voldir = tmp_path / "vols"
    write_volume(voldir / "isbi_stack.nrrd", np.stack(slices), spacing=(50.0, 4.0, 4.0))
    (voldir / "tomo.tif").symlink_to(shared_data / "cryoet" / "tomo.tif")
    assert P3.main([str(voldir), str(tmp_path / "o3"), "-q"]) == 0
    rows3 = _check_manifest_against_shards(tmp_path / "o3")
    stack_rows = [r for r in rows3 if r["name"].startswith("isbi_stack")]
    assert len(stack_rows) == 30 * 4 and {r["axis"] for r in stack_rows} == {"0"}
    # consecutive ssTEM sections of the same patch of tissue are not near duplicates at distance 12 ...
    stack_kept = [r for r in stack_rows if r["status"] == "kept"]
    assert len(stack_kept) >= 60
    # ... while the smooth float cryo-ET tomogram (negative values) collapses a lot
    tomo = store.load_shard(tmp_path / "o3" / "tomo.h5")
    assert tomo["metadata"]["dtype"] == "float32" and tomo["metadata"]["intensity_limits"][0] < 0
    assert 0 < len(tomo["names"]) < 101
    assert all(p.shape == (135, 135) for p in tomo["patches"])


def test_wide_volumes_read_in_blocks_give_the_same_shards(tmp_path, monkeypatch):
    """When a z band exceeds the memory budget, cross sections are read in blocks: same result, less memory."""
    import cellemnet.dataset.patchify as patchify

    vol = (_volume((40, 90, 110)).astype(np.float32) - 50) * 3  # float: converted to uint8 block by block
    write_volume(tmp_path / "v" / "wide.h5", vol)
    assert P3.main([str(tmp_path / "v"), str(tmp_path / "whole"), "-cs", "32", "-q"]) == 0
    monkeypatch.setattr(patchify, "_BAND_BUDGET", 32 * 90 * 7)  # a few sections per block
    assert P3.main([str(tmp_path / "v"), str(tmp_path / "blocks"), "-cs", "32", "-q"]) == 0
    assert _shard_contents(tmp_path / "blocks") == _shard_contents(tmp_path / "whole")
    assert (tmp_path / "blocks" / "manifest.csv").read_text() == (tmp_path / "whole" / "manifest.csv").read_text()


def test_patchify3d_never_reads_its_own_outputs(tmp_path, capsys):
    voldir = tmp_path / "vols"
    write_volume(voldir / "cube.nrrd", _volume(), spacing=(5.0, 5.0, 5.0))
    for out in (voldir, voldir / "shards"):  # the output folder is the volume folder, or inside it
        assert P3.main([str(voldir), str(out), "-cs", "64", "-q"]) == 0
        first = store.load_shard(out / "cube.h5")["names"]
        assert P3.main([str(voldir), str(out), "-cs", "64", "-q"]) == 0  # the re-run: cube.h5 is no volume
        assert sorted(p.name for p in out.glob("*.h5")) == ["cube.h5"]
        assert store.load_shard(out / "cube.h5")["names"] == first
    text = capsys.readouterr()
    assert "cube.h5" not in text.err


def test_patchify2d_group_with_only_bad_images_names_the_file_and_reason(tmp_path, capsys):
    imdir = tmp_path / "imgs"
    (imdir / "projC").mkdir(parents=True)
    (imdir / "projC" / "only.png").write_bytes(b"\x89PNG garbage")
    assert P2.main([str(imdir), str(tmp_path / "out"), "-cs", "64", "-q"]) == 1
    text = capsys.readouterr()
    line = next(x for x in (text.out + text.err).splitlines() if "none of its 1 images" in x)
    assert "only.png" in line and "projC" in line


def test_patchify2d_never_reads_its_own_outputs(tmp_path, capsys):
    imdir = tmp_path / "imgs"
    write_image(imdir / "proj" / "a.png", np.random.default_rng(0).integers(0, 255, (300, 300), dtype=np.uint8))
    for out in (imdir / "out", imdir):  # output inside the image folder, or the image folder itself
        for _ in range(2):  # the re-run must not take the shard folder as an image group
            assert P2.main([str(imdir), str(out), "-cs", "64", "-q"]) == 0
        assert sorted(p.name for p in out.glob("*.h5")) == ["proj.h5"]
    text = capsys.readouterr()
    assert "no images found" not in text.out + text.err
