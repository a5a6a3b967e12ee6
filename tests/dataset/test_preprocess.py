"""dataset/preprocess: cleanup2d, vid2stack, mrc2byte, binvol."""
from __future__ import annotations

import mrcfile
import numpy as np
from curation_scripts import load_script
from PIL import Image

from cellemnet.io import read_image, read_volume, write_image, write_video, write_volume

CLEANUP = load_script("preprocess/cleanup2d.py")
VID = load_script("preprocess/vid2stack.py")
MRC = load_script("preprocess/mrc2byte.py")
BIN = load_script("preprocess/binvol.py")


def test_cleanup2d_copy_and_in_place(tmp_path, capsys):
    group = tmp_path / "imgs" / "proj"
    group.mkdir(parents=True)
    rng = np.random.default_rng(0)
    write_image(group / "deep.png", rng.integers(0, 4000, (40, 50)).astype(np.uint16))
    write_image(group / "float.tif", rng.normal(-3, 1, (40, 50)).astype(np.float32))
    rgb = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(group / "colour.jpg")
    write_image(group / "fine.png", rng.integers(0, 256, (40, 50), dtype=np.uint8))
    (group / "bad.png").write_bytes(b"not a png")
    out = tmp_path / "clean"
    assert CLEANUP.main([str(tmp_path / "imgs"), "-o", str(out), "-q"]) == 1
    text = capsys.readouterr().out
    assert "bad.png" in text and "4 written" in text
    assert sorted(p.name for p in (out / "proj").iterdir()) == ["colour.png", "deep.png", "fine.png", "float.tif"]
    for p in (out / "proj").iterdir():
        image = read_image(p)
        assert image.dtype == np.uint8 and image.ndim == 2
    assert read_image(out / "proj" / "deep.png").max() == 255  # rescaled, not clipped at 8 bits
    # in place: 8-bit gray files are left alone, others are rewritten in their own format
    (group / "bad.png").unlink()
    fine_before = (group / "fine.png").read_bytes()
    assert CLEANUP.main([str(tmp_path / "imgs"), "-q"]) == 0
    assert "3 written, 1 already 8-bit gray" in capsys.readouterr().out
    assert (group / "fine.png").read_bytes() == fine_before
    assert read_image(group / "float.tif").dtype == np.uint8
    assert Image.open(group / "colour.jpg").mode == "L"


def test_vid2stack_names_and_frames(tmp_path, capsys):
    frames = np.zeros((6, 32, 48), np.uint8)
    frames[:, 8:24, 8:40] = np.arange(6)[:, None, None] * 40
    write_video(tmp_path / "cells.avi", frames)
    write_video(tmp_path / "my_video1.avi", frames)
    (tmp_path / "broken.mp4").write_bytes(b"nope")
    assert VID.main([str(tmp_path), "-q"]) == 1
    text = capsys.readouterr().out
    assert "broken.mp4" in text and "2 stacks written" in text
    stack, _ = read_volume(tmp_path / "cells_video.nrrd")
    assert stack.shape == (6, 32, 48) and stack.dtype == np.uint8
    assert abs(int(stack[5, 16, 20]) - 200) < 12  # lossy codec: close to the frame values
    assert (tmp_path / "my_video1.nrrd").exists()
    VID.main([str(tmp_path), "-q"])
    assert "0 stacks written, 2 already there" in capsys.readouterr().out


def test_mrc2byte_signed_and_float(tmp_path, capsys):
    rng = np.random.default_rng(1)
    with mrcfile.new(tmp_path / "signed.mrc") as m:
        m.set_data(rng.integers(-128, 128, (4, 20, 20)).astype(np.int8))
        m.voxel_size = (2.0, 2.0, 3.0)
    with mrcfile.new(tmp_path / "float.mrc") as m:
        m.set_data(rng.normal(0, 1, (4, 20, 20)).astype(np.float32))
    out = tmp_path / "out"
    assert MRC.main([str(tmp_path), "-o", str(out), "-q"]) == 0
    signed, spacing = read_volume(out / "signed.mrc")
    assert signed.dtype == np.uint8 and signed.max() > 200 and signed.min() < 50
    assert np.allclose(spacing, (3.0, 2.0, 2.0))
    assert read_volume(out / "float.mrc")[0].dtype == np.uint8
    # in place, twice: the second run has nothing to do
    assert MRC.main([str(tmp_path), "-q"]) == 0
    capsys.readouterr()
    assert MRC.main([str(tmp_path), "-q"]) == 0
    assert "0 converted, 2 already 8-bit" in capsys.readouterr().out


def test_binvol_mean_spacing_and_inplace(tmp_path, capsys):
    vol = np.arange(5 * 6 * 7, dtype=np.uint16).reshape(5, 6, 7)
    write_volume(tmp_path / "v.nrrd", vol, spacing=(2.0, 1.0, 1.0))
    assert BIN.main([str(tmp_path), "-f", "2", "-q"]) == 0
    binned, spacing = read_volume(tmp_path / "v_bin2.nrrd")
    assert binned.shape == (2, 3, 3) and binned.dtype == np.uint16
    assert binned[0, 0, 0] == np.rint(vol[:2, :2, :2].mean())
    assert tuple(spacing) == (4.0, 2.0, 2.0)
    assert BIN.main([str(tmp_path), "-f", "2", "-q"]) == 0
    assert "0 binned by 2, 1 already done" in capsys.readouterr().out
    assert BIN.main([str(tmp_path / "v.nrrd"), "-f", "3", "--inplace", "-q"]) == 0
    assert read_volume(tmp_path / "v.nrrd")[0].shape == (1, 2, 2)
    assert BIN.main([str(tmp_path), "-f", "1", "-q"]) == 2


def test_binvol_refuses_nan_volumes_and_oversized_factors_naming_the_file(tmp_path, capsys):
    nan = np.full((4, 4, 4), np.nan, dtype=np.float32)
    write_volume(tmp_path / "nan.nrrd", nan)
    write_volume(tmp_path / "ok.nrrd", np.ones((4, 4, 4), dtype=np.float32))
    assert BIN.main([str(tmp_path), "-f", "2", "-q"]) == 1
    out = capsys.readouterr().out
    assert "error: " in out and "nan.nrrd: 8 of 8 binned voxels are NaN" in out
    assert not (tmp_path / "nan_bin2.nrrd").exists() and (tmp_path / "ok_bin2.nrrd").exists()
    assert BIN.main([str(tmp_path / "ok.nrrd"), "-f", "1000", "-q", "-o", str(tmp_path / "big")]) == 1
    errors = [line for line in capsys.readouterr().out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "ok.nrrd: volume of shape (4, 4, 4) is smaller than the bin factor 1000" in errors[0]


def test_cleanup2d_follows_symlinked_project_folders_once(tmp_path, capsys):
    real = tmp_path / "elsewhere" / "projX"
    real.mkdir(parents=True)
    write_image(real / "a.png", np.random.default_rng(1).integers(0, 4000, (20, 20)).astype(np.uint16))
    imdir = tmp_path / "imgs"
    imdir.mkdir()
    (imdir / "projX").symlink_to(real, target_is_directory=True)
    (real / "loop").symlink_to(imdir, target_is_directory=True)  # a cycle must not loop
    out = tmp_path / "clean"
    assert CLEANUP.main([str(imdir), "-o", str(out), "-q"]) == 0
    assert "cleanup2d: 1 images: 1 written" in capsys.readouterr().out
    assert read_image(out / "projX" / "a.png").dtype == np.uint8
