"""create_slices / create_patches: planes, last slice, 'none' masks, tile layout, label binarisation, CLI errors."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from cellemnet.errors import InputError
from cellemnet.evaluation.setup import patches, slices
from cellemnet.io import read_image, write_image, write_volume


def run_script(root, name, *args):
    return subprocess.run([sys.executable, str(root / "evaluation" / "setup_benchmarks" / name), *map(str, args)],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def volume(tmp_path):
    image = np.arange(4 * 6 * 5, dtype=np.uint16).reshape(4, 6, 5) * 10  # not uint8: rescaled per volume
    labels = (np.arange(4 * 6 * 5).reshape(4, 6, 5) % 3).astype(np.uint16)
    write_volume(tmp_path / "vols" / "images" / "cell.a.nrrd", image)
    write_volume(tmp_path / "vols" / "masks" / "cell.a.nrrd", labels)
    return image, labels


def test_every_plane_with_the_last_slice_and_original_axis_numbers(tmp_path, volume):
    image, labels = volume
    count = slices.slice_volume(tmp_path / "vols/images/cell.a.nrrd", tmp_path / "vols/masks/cell.a.nrrd",
                                tmp_path / "out", planes=["xy", "xz", "yz"])
    assert count == 4 + 6 + 5
    masks = tmp_path / "out" / "masks"
    np.testing.assert_array_equal(read_image(masks / "cell_2_3.tiff"), labels[3])  # xy, last z slice included
    np.testing.assert_array_equal(read_image(masks / "cell_1_5.tiff"), labels[:, 5, :])  # xz
    np.testing.assert_array_equal(read_image(masks / "cell_0_4.tiff"), labels[:, :, 4])  # yz
    img = read_image(tmp_path / "out" / "images" / "cell_2_0.tiff")
    last = read_image(tmp_path / "out" / "images" / "cell_2_3.tiff")
    assert img.dtype == np.uint8 and img.min() == 0 and last.max() == 255  # one intensity range for the volume


def test_spacing_and_no_masks(tmp_path, volume):
    count = slices.slice_volume(tmp_path / "vols/images/cell.a.nrrd", None, tmp_path / "out", planes=["xy"], step=3)
    assert count == 2  # slices 0 and 3
    assert sorted(p.name for p in (tmp_path / "out" / "images").iterdir()) == ["cell_2_0.tiff", "cell_2_3.tiff"]
    assert not (tmp_path / "out" / "masks").exists()


def test_plane_names_and_numbers():
    assert [slices.parse_plane(a) for a in ("2", "1", "0", "XY")] == ["xy", "xz", "yz", "xy"]
    with pytest.raises(InputError, match="unknown plane"):
        slices.parse_plane("zz")


def test_mismatched_mask_shape_is_named(tmp_path):
    write_volume(tmp_path / "a.nrrd", np.zeros((2, 4, 4), np.uint8))
    write_volume(tmp_path / "b.nrrd", np.zeros((2, 4, 5), np.uint8))
    with pytest.raises(InputError, match="b.nrrd.*differs"):
        slices.slice_volume(tmp_path / "a.nrrd", tmp_path / "b.nrrd", tmp_path / "out")


def test_labels_above_255_are_refused(tmp_path):
    write_volume(tmp_path / "a.nrrd", np.zeros((1, 4, 4), np.uint8))
    write_volume(tmp_path / "m.nrrd", np.full((1, 4, 4), 300, np.uint16))
    with pytest.raises(InputError, match="0..255"):
        slices.slice_volume(tmp_path / "a.nrrd", tmp_path / "m.nrrd", tmp_path / "out")


def test_create_slices_script_on_folders_and_none(tmp_path, volume, root):
    result = run_script(root, "create_slices.py", tmp_path / "vols/images", tmp_path / "vols/masks", tmp_path / "o1",
                        "-a", "2", "0", "-s", "1")
    assert result.returncode == 0, result.stderr
    assert "wrote 9 slices" in result.stdout
    assert len(list((tmp_path / "o1" / "masks").iterdir())) == 9
    result = run_script(root, "create_slices.py", tmp_path / "vols/images/cell.a.nrrd", "none", tmp_path / "o2")
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "o2" / "images").iterdir())) == 4


def test_create_slices_script_missing_input_is_one_line(tmp_path, root):
    result = run_script(root, "create_slices.py", tmp_path / "nope.nrrd", "none", tmp_path / "o")
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error:") and "nope.nrrd" in result.stderr
    assert "Traceback" not in result.stderr


# ------------------------------------------------------------------------------------------------ patches
@pytest.mark.parametrize("size, crop, expected", [
    (512, 256, [0, 256]),  # multiple of the crop: tiles touch
    (300, 256, [0, 44]),  # one extra tile, last one ends at the border
    (1000, 256, [0, 248, 496, 744]),
    (100, 256, [0]),  # smaller than the crop: one smaller tile
    (1100, 512, [0, 294, 588]),  # crop above 255 (the original's uint8 offsets broke here)
])
def test_tile_starts(size, crop, expected):
    starts = patches.spread_tile_starts(size, crop)
    assert starts == expected
    assert min(starts[-1] + crop, size) == size


def test_tiles_cover_the_image(tmp_path):
    shape = (300, 530)
    covered = np.zeros(shape, bool)
    for y0, y1, x0, x1 in patches.patch_boxes(shape, 256):
        assert (y1 - y0, x1 - x0) == (256, 256)
        covered[y0:y1, x0:x1] = True
    assert covered.all()


def test_patch_folder_with_label(tmp_path):
    mask = np.zeros((300, 256), np.uint8)
    mask[:10] = 2
    mask[10:20] = 1
    write_image(tmp_path / "in" / "m.b.png", mask)
    count = patches.patch_folder(tmp_path / "in", tmp_path / "out", crop=256, label=2)
    assert count == 2
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["m_0_0.png", "m_44_0.png"]
    top = read_image(tmp_path / "out" / "m_0_0.png")
    assert top[:10].all() and top[10:].sum() == 0 and top.max() == 1


def test_patch_pairs_skip_mostly_empty_images(tmp_path):
    image = np.zeros((64, 128), np.uint8)
    image[:, :64] = 100  # left half has data, right half is black padding
    mask = np.zeros_like(image)
    mask[5:10, 5:10] = 2
    write_image(tmp_path / "img" / "a.png", image)
    write_image(tmp_path / "msk" / "a.png", mask)
    written, skipped = patches.patch_pairs(tmp_path / "img", tmp_path / "msk", tmp_path / "out", label=2, crop=64,
                                           prefix="src-")
    assert (written, skipped) == (1, 1)
    assert [p.name for p in (tmp_path / "out" / "masks").iterdir()] == ["src-a_0_0.png"]
    assert read_image(tmp_path / "out" / "masks" / "src-a_0_0.png").sum() == 25


def test_patch_pairs_need_a_mask_per_image(tmp_path):
    write_image(tmp_path / "img" / "a.png", np.ones((8, 8), np.uint8))
    (tmp_path / "msk").mkdir()
    with pytest.raises(InputError, match="a.png: no mask"):
        patches.patch_pairs(tmp_path / "img", tmp_path / "msk", tmp_path / "out", label=1, crop=4)


def test_create_patches_script(tmp_path, root):
    write_image(tmp_path / "in" / "x.png", np.full((20, 30), 7, np.uint8))
    result = run_script(root, "create_patches.py", tmp_path / "in", tmp_path / "out", "-cs", "16")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["x_0_0.png", "x_0_14.png", "x_4_0.png",
                                                                   "x_4_14.png"]
    result = run_script(root, "create_patches.py", tmp_path / "missing", tmp_path / "out")
    assert result.returncode == 2 and "missing: folder not found" in result.stderr


@pytest.mark.shared_data
def test_real_isbi_stack_slices_and_patches(shared_data, tmp_path):
    """Real ssTEM (ISBI 2012): a 4-slice stack cut on all planes, and 512-px images cut into 256-px patches."""
    folder = shared_data / "isbi2012" / "train"
    names = sorted(p.name for p in (folder / "images").iterdir())[:4]
    stack = np.stack([read_image(folder / "images" / n) for n in names])
    labels = np.stack([read_image(folder / "labels" / n) for n in names])
    write_volume(tmp_path / "isbi.nrrd", stack)
    write_volume(tmp_path / "isbi_labels.nrrd", (labels == 255).astype(np.uint8))
    count = slices.slice_volume(tmp_path / "isbi.nrrd", tmp_path / "isbi_labels.nrrd", tmp_path / "slices",
                                planes=["xy", "xz"], step=128)
    assert count == 1 + 4  # z: 0 (of 4, step 128); y: 0, 128, 256, 384
    np.testing.assert_array_equal(read_image(tmp_path / "slices" / "images" / "isbi_1_384.tiff"), stack[:, 384, :])
    for n in names[:2]:
        write_image(tmp_path / "img" / n, read_image(folder / "images" / n))
        write_image(tmp_path / "msk" / n, read_image(folder / "labels" / n))
    written, skipped = patches.patch_pairs(tmp_path / "img", tmp_path / "msk", tmp_path / "patches", label=255)
    assert (written, skipped) == (8, 0)  # 512 px -> 2 x 2 non-overlapping 256-px tiles, none empty
    first = names[0].split(".")[0]
    patch = read_image(tmp_path / "patches" / "masks" / f"{first}_256_0.png")
    np.testing.assert_array_equal(patch, (read_image(folder / "labels" / names[0])[256:, :256] == 255))
