"""ngff_download on an OME-Zarr written locally, and crop_rois_from_volume."""
from __future__ import annotations

import numpy as np
import pytest
import zarr
from curation_scripts import load_script

from cellemnet.dataset.ngff import cube_boxes, n_cubes_for
from cellemnet.io import read_volume, write_volume

NGFF = load_script("scraping/ngff_download.py")
CROP = load_script("scraping/crop_rois_from_volume.py")


def _volume():
    rng = np.random.default_rng(0)
    vol = rng.integers(1, 256, (32, 64, 96), dtype=np.uint8)
    vol[:, :, 64:] = 0  # padding: the last third in x
    return vol


def _write_ome_zarr(path, vol, with_channel=False):
    """Two levels, anisotropic scale, zarr v2 / OME-Zarr 0.4 (as public NGFF stores)."""
    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    levels = [vol, vol[::2, ::2, ::2]]
    axes = [{"name": "z", "type": "space"}, {"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
    if with_channel:
        axes = [{"name": "c", "type": "channel"}] + axes
    datasets = []
    for i, level in enumerate(levels):
        data = level[None] if with_channel else level
        group.create_array(str(i), data=data, chunks=data.shape)
        scale = [30.0 * 2**i, 4.0 * 2**i, 4.0 * 2**i]
        datasets.append({"path": str(i), "coordinateTransformations": [
            {"type": "scale", "scale": ([1.0] if with_channel else []) + scale}]})
    group.attrs["multiscales"] = [{"version": "0.4", "axes": axes, "datasets": datasets}]


@pytest.mark.parametrize("with_channel", [False, True])
def test_ngff_download_crops_with_spacing_and_skips_padding(tmp_path, capsys, with_channel):
    vol = _volume()
    _write_ome_zarr(tmp_path / "img.zarr", vol, with_channel)
    csv = tmp_path / "list.csv"
    csv.write_text("url,volume_name,mip,crop_size,invert,padding_value\n"
                   f"{tmp_path / 'img.zarr'},cells,0,32,false,0\n"
                   f"{tmp_path / 'missing.zarr'},gone,0,32,false,0\n")
    out = tmp_path / "rois"
    assert NGFF.main([str(csv), str(out), "-gb", "1", "-q"]) == 1
    text = capsys.readouterr().out
    assert "missing.zarr" in text and "error:" in text
    files = sorted(out.glob("*.nrrd"))
    # grid 1 x 2 x 3 cubes of 32; the x = 64..96 column is padding
    assert [f.name for f in files] == [
        "cells_s0-ROI-z0-32_y0-32_x0-32.nrrd", "cells_s0-ROI-z0-32_y0-32_x32-64.nrrd",
        "cells_s0-ROI-z0-32_y32-64_x0-32.nrrd", "cells_s0-ROI-z0-32_y32-64_x32-64.nrrd",
    ]
    crop, spacing = read_volume(files[1])
    assert np.array_equal(crop, vol[0:32, 0:32, 32:64])
    assert tuple(spacing) == (30.0, 4.0, 4.0)  # z, y, x: not reversed
    # a small budget draws a seeded subset; a re-run keeps what exists
    out2 = tmp_path / "few"
    csv.write_text(f"url,volume_name,mip,crop_size\n{tmp_path / 'img.zarr'},cells,1,8\n")
    n = n_cubes_for(2 * 8**3 / 1024**3, 8)
    assert n == 2
    assert NGFF.main([str(csv), str(out2), "-gb", str(2 * 8**3 / 1024**3), "-q", "--seed", "3"]) == 0
    first = sorted(p.name for p in out2.glob("*.nrrd"))
    assert len(first) == 2 and all(p.startswith("cells_s1-ROI-") for p in first)
    assert read_volume(out2 / first[0])[1] == (60.0, 8.0, 8.0)
    assert NGFF.main([str(csv), str(out2), "-gb", str(2 * 8**3 / 1024**3), "-q", "--seed", "3"]) == 0
    assert "0 cubes written, 2 already there" in capsys.readouterr().out


def test_crop_rois_from_local_volume(tmp_path, capsys):
    vol = _volume()
    write_volume(tmp_path / "big.nrrd", vol, spacing=(30.0, 4.0, 4.0))
    assert CROP.main([str(tmp_path / "big.nrrd"), str(tmp_path / "rois"), "-cs", "32", "-q"]) == 0
    files = sorted((tmp_path / "rois").glob("*.nrrd"))
    assert len(files) == 4 and all(f.name.startswith("big-ROI-z0-32_") for f in files)
    crop, spacing = read_volume(files[0])
    assert np.array_equal(crop, vol[0:32, 0:32, 0:32]) and tuple(spacing) == (30.0, 4.0, 4.0)
    assert CROP.main([str(tmp_path / "nope.nrrd"), str(tmp_path / "rois"), "-q"]) == 2
    assert "nope.nrrd" in capsys.readouterr().err


def test_cube_grid():
    boxes = cube_boxes((300, 100, 600), 256)
    assert boxes.tolist() == [[0, 0, 0, 256, 100, 256], [0, 0, 256, 256, 100, 512]]  # 300 -> 1, 100 -> 1, 600 -> 2


@pytest.mark.parametrize("bad", ["../../escape", "/tmp/absolute_escape", "sub/dir", "..", "a\\b"])
def test_ngff_download_never_writes_outside_its_folder(tmp_path, capsys, bad):
    _write_ome_zarr(tmp_path / "img.zarr", _volume())
    csv = tmp_path / "list.csv"
    csv.write_text(f"url,volume_name,mip,crop_size\n{tmp_path / 'img.zarr'},good,0,32\n"
                   f"{tmp_path / 'img.zarr'},{bad},0,32\n")
    work = tmp_path / "deep" / "er"
    out = work / "rois"
    before = {p for p in tmp_path.rglob("*")}
    code = NGFF.main([str(csv), str(out), "-gb", "1", "-q"])
    assert code != 0
    err = capsys.readouterr().err
    assert f"{csv}: line 3, column 'volume_name'" in err and repr(bad) in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    written = {p for p in tmp_path.rglob("*")} - before
    assert not [p for p in written if p.suffix == ".nrrd"]  # refused before any download
    assert not list(tmp_path.parent.glob("*escape*"))
    assert not list(__import__("pathlib").Path("/tmp").glob("absolute_escape*"))


def test_safe_path_helpers(tmp_path):
    from cellemnet.errors import InputError
    from cellemnet.safepath import inside, path_component

    assert path_component("cells_s0", "x") == "cells_s0"
    for bad in ("", " ", ".", "..", "a/b", "a\\b", "/abs", "C:", "x\x00y"):
        with pytest.raises(InputError, match="plain file name"):
            path_component(bad, "here")
    assert inside(tmp_path, tmp_path / "a" / "b.nrrd", "w") == tmp_path / "a" / "b.nrrd"
    with pytest.raises(InputError, match="outside"):
        inside(tmp_path / "out", tmp_path / "out" / ".." / "x.nrrd", "w")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "link").symlink_to(tmp_path)
    with pytest.raises(InputError, match="outside"):
        inside(tmp_path / "out", tmp_path / "out" / "link" / "x.nrrd", "w")
