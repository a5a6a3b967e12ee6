"""reconstruct3d: subvolumes around curated 3D patches, every ROI of a dataset, exact volume matching."""
from __future__ import annotations

import numpy as np
from curation_scripts import load_script

from cellemnet.dataset import store
from cellemnet.dataset.names import format_name, parse_subvolume_name
from cellemnet.io import read_volume, write_image, write_volume

P3 = load_script("patchify3d.py")
R3 = load_script("reconstruct3d.py")


def _vol(shape, seed):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_subvolumes_match_patches_on_every_axis_and_roi(tmp_path, capsys):
    vols = tmp_path / "vols"
    data = {
        "cell-ROI-a": _vol((20, 70, 70), 0),
        "cell-ROI-b": _vol((20, 70, 70), 1),
        "cell-ROI-b0": _vol((20, 70, 70), 2),  # 'cell-ROI-b' is a prefix of this name: must not be mixed up
    }
    for name, vol in data.items():
        write_volume(vols / f"{name}.nrrd", vol, spacing=(1.2, 1.1, 1.0))  # within 25 %: all axes
    assert P3.main([str(vols), str(tmp_path / "shards"), "-cs", "32", "-q"]) == 0
    capsys.readouterr()
    assert R3.main([str(tmp_path / "shards"), "-vd", str(vols), "-sd", str(tmp_path / "sub"), "-nz", "5", "-q"]) == 0
    out = capsys.readouterr().out
    files = sorted((tmp_path / "sub" / "cell").glob("*.tif"))
    assert files and {parse_subvolume_name(f.name).source for f in files} == set(data)
    n_patches = sum(len(store.ShardReader(p)) for p in store.list_shards(tmp_path / "shards"))
    n_edge = int(out.split("already there, ")[1].split(" too close")[0])
    assert len(files) + n_edge == n_patches and n_edge > 0
    axes_seen = set()
    for f in files:
        sub = parse_subvolume_name(f.name)
        stack, spacing = read_volume(f)
        assert stack.shape == (5, sub.y1 - sub.y0, sub.x1 - sub.x0)
        vol = data[sub.source]
        centre = (sub.low + sub.high) // 2
        section = np.take(vol, centre, axis=sub.axis)
        assert np.array_equal(stack[2], section[sub.y0 : sub.y1, sub.x0 : sub.x1])
        assert np.array_equal(stack[0], np.take(vol, sub.low, axis=sub.axis)[sub.y0 : sub.y1, sub.x0 : sub.x1])
        assert np.allclose(spacing, {0: (1.2, 1.1, 1.0), 1: (1.1, 1.2, 1.0), 2: (1.0, 1.2, 1.1)}[sub.axis])
        axes_seen.add(sub.axis)
    assert axes_seen == {0, 1, 2}
    # a re-run writes nothing new
    assert R3.main([str(tmp_path / "shards"), "-vd", str(vols), "-sd", str(tmp_path / "sub"), "-q"]) == 0
    assert "0 subvolumes written" in capsys.readouterr().out


def test_patch_files_limit_edges_and_missing_volume(tmp_path, capsys):
    vols = tmp_path / "vols"
    write_volume(vols / "v.h5", _vol((9, 40, 40), 3))  # lazy HDF5, single dataset
    patches = tmp_path / "filtered" / "v"
    names = [
        format_name("v", 0, 16, 0, 16, axis=0, slice_index=2),  # 0..5: fits
        format_name("v", 0, 16, 0, 16, axis=0, slice_index=1),  # -1..4: off the volume
        format_name("v", 0, 16, 0, 16, axis=0, slice_index=6),  # 4..9: fits (end == depth is valid)
        format_name("v", 0, 16, 0, 16, axis=0, slice_index=7),  # 5..10: off
        format_name("img", 0, 16, 0, 16),  # 2D: ignored
        format_name("gone", 0, 16, 0, 16, axis=1, slice_index=9),
    ]
    for n in names:
        write_image(patches / f"{n}.tiff", np.zeros((16, 16), np.uint8))
    code = R3.main([str(tmp_path / "filtered"), "-vd", str(vols), "-sd", str(tmp_path / "sub"), "-q"])
    out = capsys.readouterr().out
    assert code == 1 and "no volume named 'gone'" in out
    assert "2 subvolumes written" in out and "2 too close" in out and "1 2D patches ignored" in out
    got = sorted(p.name for p in (tmp_path / "sub" / "v").glob("*.tif"))
    assert got == ["v-LOC-0_0-5_0-16_0-16.tif", "v-LOC-0_4-9_0-16_0-16.tif"]
    capsys.readouterr()
    R3.main([str(tmp_path / "filtered"), "-vd", str(vols), "-sd", str(tmp_path / "lim"), "-q", "--limit", "1"])
    assert len(list((tmp_path / "lim").rglob("*.tif"))) <= 1
