"""cellemnet.io: every reader/writer round-trips, conversions are robust, failures name the file."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cellemnet import io
from cellemnet.errors import InputError


@pytest.fixture
def volume16() -> np.ndarray:
    """A 16-bit volume with a narrow range (1000..4000), like raw detector data."""
    rng = np.random.default_rng(0)
    return rng.integers(1000, 4001, size=(5, 24, 32)).astype(np.uint16)


# ---------------------------------------------------------------------------------------------------------- import
def test_import_is_light():
    code = ("import sys, cellemnet.io; heavy = [m for m in ('torch', 'cv2', 'SimpleITK', 'zarr', 'h5py', 'mrcfile')"
            " if m in sys.modules]; print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""


def test_suffix_helpers():
    assert io.is_image_file("a/b.PNG") and io.is_image_file("x.tiff") and not io.is_image_file("v.nrrd")
    assert io.is_volume_file("v.nii.gz") and io.is_volume_file("v.mrc") and io.is_volume_file("clip.mp4")
    assert io.is_volume_file("data.h5:/volumes/raw") and io.is_volume_file("s.zarr/raw")
    assert not io.is_volume_file("notes.txt")
    assert io.split_container_path("d/data.h5:/volumes/raw") == (Path("d/data.h5"), "volumes/raw", "h5")
    assert io.split_container_path("d/s.zarr/0") == (Path("d/s.zarr"), "0", "zarr")
    assert io.split_container_path("d/v.nrrd") == (Path("d/v.nrrd"), None, None)
    assert ".nii.gz" in io.VOLUME_SUFFIXES and ".png" in io.IMAGE_SUFFIXES


# ---------------------------------------------------------------------------------------------------------- 2D images
@pytest.mark.parametrize("suffix,dtype", [(".tif", np.uint8), (".tif", np.uint16), (".tif", np.float32),
                                          (".png", np.uint8), (".png", np.uint16), (".bmp", np.uint8)])
def test_image_round_trip_lossless(tmp_path, suffix, dtype):
    rng = np.random.default_rng(1)
    image = (rng.random((20, 30)) * (250 if dtype == np.uint8 else 4000) - (50 if dtype == np.float32 else 0))
    image = image.astype(dtype)
    path = io.write_image(tmp_path / f"img{suffix}", image)
    back = io.read_image(path)
    assert back.dtype == dtype and back.shape == (20, 30)
    np.testing.assert_array_equal(back, image)


def test_jpeg_round_trip_is_close(tmp_path):
    image = np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (32, 1))
    back = io.read_image(io.write_image(tmp_path / "a.jpg", image))
    assert back.shape == image.shape and back.dtype == np.uint8
    assert np.abs(back.astype(int) - image).mean() < 3


def test_gray_alpha_png_drops_alpha(tmp_path):
    from PIL import Image

    gray = np.arange(12 * 16, dtype=np.uint8).reshape(12, 16)
    alpha = np.full_like(gray, 7)
    Image.fromarray(np.stack([gray, alpha], -1), "LA").save(tmp_path / "la.png")
    back = io.read_image(tmp_path / "la.png")
    assert back.shape == gray.shape
    np.testing.assert_array_equal(back, gray)


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".jpg", ".tif"])
def test_colour_images_become_gray(tmp_path, suffix):
    from PIL import Image

    rgb = np.zeros((10, 12, 3), dtype=np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 50
    Image.fromarray(rgb).save(tmp_path / f"c{suffix}")
    back = io.read_image(tmp_path / f"c{suffix}")
    expected = 0.299 * 200 + 0.587 * 100 + 0.114 * 50  # BT.601 luma; same answer for RGB (tif) and BGR (cv2)
    assert back.shape == (10, 12) and back.dtype == np.uint8
    assert abs(float(back.mean()) - expected) < 2.5


def test_rgba_png_and_equal_channels(tmp_path):
    from PIL import Image

    gray = np.arange(100, dtype=np.uint8).reshape(10, 10)
    rgba = np.stack([gray, gray, gray, np.full_like(gray, 3)], -1)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "g.png")
    np.testing.assert_array_equal(io.read_image(tmp_path / "g.png"), gray)  # equal channels kept exactly


def test_multipage_tif_is_not_an_image(tmp_path, volume16):
    io.write_volume(tmp_path / "stack.tif", volume16)
    with pytest.raises(InputError, match=r"stack\.tif.*read_volume"):
        io.read_image(tmp_path / "stack.tif")


def test_write_image_rejects_wrong_input(tmp_path):
    with pytest.raises(InputError, match="2D"):
        io.write_image(tmp_path / "a.tif", np.zeros((2, 3, 4, 5)))
    with pytest.raises(InputError, match=r"a\.png.*float"):
        io.write_image(tmp_path / "a.png", np.zeros((4, 4), np.float32))
    assert not (tmp_path / "a.png").exists()


# ---------------------------------------------------------------------------------------------------------- volumes
@pytest.mark.parametrize("name", ["v.nrrd", "v.nii.gz", "v.nii", "v.mha", "v.tif", "v.mrc"])
def test_volume_round_trip_keeps_spacing(tmp_path, volume16, name):
    spacing = (30.0, 4.5, 4.0)
    path = io.write_volume(tmp_path / name, volume16, spacing)
    data, back_spacing = io.read_volume(path)
    assert isinstance(data, np.ndarray)
    np.testing.assert_array_equal(data, volume16)
    np.testing.assert_allclose(back_spacing, spacing, rtol=1e-5)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.float32])
def test_mrc_dtypes_and_voxel_size(tmp_path, dtype):
    rng = np.random.default_rng(2)
    info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else None
    data = (rng.integers(info.min, info.max, (3, 8, 9), endpoint=True) if info else rng.normal(0, 1, (3, 8, 9)))
    data = data.astype(dtype)
    path = io.write_volume(tmp_path / "t.mrc", data, (2.0, 1.5, 1.25))
    back, spacing = io.read_volume(path)
    assert back.dtype == dtype  # uint8 stays unsigned (IMOD flag), not widened or wrapped to int8
    np.testing.assert_array_equal(back, data)
    np.testing.assert_allclose(spacing, (2.0, 1.5, 1.25))


def test_mrc_from_other_tools_voxel_size(tmp_path):
    import mrcfile

    data = np.arange(2 * 4 * 5, dtype=np.float32).reshape(2, 4, 5) - 20
    with mrcfile.new(tmp_path / "tomo.rec") as mrc:
        mrc.set_data(data)
        mrc.voxel_size = (3.0, 2.0, 7.5)  # x, y, z
    with io.open_volume(tmp_path / "tomo.rec") as reader:
        assert reader.spacing == (7.5, 2.0, 3.0)
        assert reader.lazy
        np.testing.assert_array_equal(reader[1], data[1])


def test_hdf5_is_lazy_and_streams_slices(tmp_path, volume16):
    import h5py

    address = f"{tmp_path / 'data.h5'}:/volumes/raw"
    io.write_volume(address, volume16, (40.0, 4.0, 4.0))
    with io.open_volume(address) as reader:
        assert isinstance(reader.array, h5py.Dataset)  # nothing read yet
        assert reader.shape == volume16.shape and reader.dtype == np.uint16
        assert reader.spacing == (40.0, 4.0, 4.0)
        slices = reader.slices(axis=0)
        first = next(slices)
        assert isinstance(first, np.ndarray) and first.shape == (24, 32)
        np.testing.assert_array_equal(first, volume16[0])
        np.testing.assert_array_equal(np.stack([first, *slices]), volume16)
        np.testing.assert_array_equal(np.stack(list(reader.slices(axis=2))), np.moveaxis(volume16, 2, 0))
    lazy, spacing = io.read_volume(address)
    assert isinstance(lazy, h5py.Dataset) and lazy.chunks[0] == 1  # chunked per slice
    np.testing.assert_array_equal(lazy[3], volume16[3])


def test_hdf5_reads_only_the_requested_slice(tmp_path, volume16, monkeypatch):
    import h5py

    address = f"{tmp_path / 'd.h5'}:/raw"
    io.write_volume(address, volume16)
    calls = []
    original = h5py.Dataset.__getitem__

    def spy(self, key, *args, **kwargs):
        calls.append(key)
        return original(self, key, *args, **kwargs)

    monkeypatch.setattr(h5py.Dataset, "__getitem__", spy)
    with io.open_volume(address) as reader:
        assert calls == []  # opening reads no pixels
        reader.slice(0, 2)
    assert len(calls) == 1 and calls[0][0] == 2


def test_hdf5_other_tools_attributes(tmp_path):
    import h5py

    with h5py.File(tmp_path / "cremi.hdf", "w") as f:
        ds = f.create_dataset("volumes/raw", data=np.zeros((2, 3, 4), np.uint8))
        ds.attrs["resolution"] = [40.0, 4.0, 4.0]
        f.create_dataset("volumes/labels", data=np.zeros((2, 3, 4), np.uint64))
    _, spacing = io.read_volume(f"{tmp_path / 'cremi.hdf'}:/volumes/raw")
    assert spacing == (40.0, 4.0, 4.0)
    with pytest.raises(InputError, match=r"cremi\.hdf.*datasets found"):
        io.read_volume(tmp_path / "cremi.hdf")  # two datasets: the key must be given


def test_zarr_is_lazy_and_streams_slices(tmp_path, volume16):
    import zarr

    for address in (tmp_path / "v.zarr", f"{tmp_path / 'g.zarr'}/raw"):
        io.write_volume(address, volume16, (8.0, 2.0, 2.0))
        with io.open_volume(address) as reader:
            assert isinstance(reader.array, zarr.Array)
            assert reader.spacing == (8.0, 2.0, 2.0)
            got = list(reader.slices(0))
            assert len(got) == 5
            np.testing.assert_array_equal(np.stack(got), volume16)
        lazy, _ = io.read_volume(address)
        assert isinstance(lazy, zarr.Array) and lazy.chunks[0] == 1


def test_ome_zarr_multiscale_level0(tmp_path, volume16):
    import zarr

    store = io.write_ome_zarr(tmp_path / "img.ome.zarr", volume16, (50.0, 5.0, 5.0))
    # add a coarser level the way OME-Zarr writers do: the reader must take level 0
    group = zarr.open_group(str(store), mode="a")
    group.create_array("1", shape=(5, 12, 16), dtype=volume16.dtype)[...] = volume16[:, ::2, ::2]
    meta = dict(group.attrs)["multiscales"]
    meta[0]["datasets"].append({"path": "1", "coordinateTransformations": [{"type": "scale",
                                                                            "scale": [50.0, 10.0, 10.0]}]})
    group.attrs["multiscales"] = meta
    with io.open_volume(store) as reader:
        assert reader.shape == volume16.shape and reader.spacing == (50.0, 5.0, 5.0)
        np.testing.assert_array_equal(reader[2], volume16[2])


def test_ome_zarr_with_channel_axis(tmp_path, volume16):
    import zarr

    group = zarr.open_group(str(tmp_path / "c.zarr"), mode="w", zarr_format=2)
    group.create_array("0", shape=(1, *volume16.shape), dtype=volume16.dtype)[...] = volume16[None]
    group.attrs["multiscales"] = [{"version": "0.4", "axes": [{"name": "c", "type": "channel"}] + [
        {"name": n, "type": "space"} for n in "zyx"], "datasets": [{"path": "0", "coordinateTransformations": [
            {"type": "scale", "scale": [1.0, 3.0, 2.0, 2.0]}]}]}]
    with io.open_volume(tmp_path / "c.zarr") as reader:
        assert reader.shape == volume16.shape and reader.spacing == (3.0, 2.0, 2.0)
        np.testing.assert_array_equal(reader[1], volume16[1])
        np.testing.assert_array_equal(reader[...], volume16)


def test_video_round_trip(tmp_path):
    frames = np.zeros((6, 32, 48), dtype=np.uint8)
    for t in range(6):
        frames[t, :, : 8 * (t + 1)] = 200
    for suffix in (".avi", ".mp4"):
        path = io.write_video(tmp_path / f"clip{suffix}", frames)
        back = io.read_video(path)
        assert back.shape == frames.shape and back.dtype == np.uint8
        assert np.abs(back.astype(int) - frames).mean() < 12  # lossy codecs
        data, spacing = io.read_volume(path)
        assert data.shape == frames.shape and spacing == (1.0, 1.0, 1.0)


def test_2d_image_opens_as_single_slice_volume(tmp_path):
    io.write_image(tmp_path / "a.png", np.full((5, 6), 9, np.uint8))
    with io.open_volume(tmp_path / "a.png") as reader:
        assert reader.shape == (1, 5, 6)


def test_write_volume_is_atomic_on_failure(tmp_path, volume16):
    path = io.write_volume(tmp_path / "keep.nrrd", volume16)
    before = path.read_bytes()
    with pytest.raises(InputError, match=r"keep\.nrrd.*3D"):
        io.write_volume(path, volume16[0])
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["keep.nrrd"]


# ---------------------------------------------------------------------------------------------------------- errors
def test_missing_files_are_named(tmp_path):
    for reader, name in ((io.read_image, "gone.png"), (io.read_volume, "gone.nrrd"),
                         (io.read_volume, "gone.h5:/raw"), (io.read_volume, "gone.zarr/raw"),
                         (io.read_video, "gone.avi")):
        with pytest.raises(InputError, match="gone.*not found"):
            reader(tmp_path / name if ":" not in name else f"{tmp_path}/{name}")


@pytest.mark.parametrize("name", ["bad.png", "bad.tif", "bad.nrrd", "bad.mrc", "bad.h5", "bad.jpg", "bad.avi"])
def test_corrupt_files_give_one_line_naming_the_file(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"this is not an image at all" * 3)
    reader = io.read_image if io.is_image_file(path) and name != "bad.tif" else io.read_volume
    with pytest.raises(InputError) as info:
        reader(path)
    message = str(info.value)
    assert name in message and "\n" not in message


def test_empty_file_and_unknown_suffix(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(InputError, match=r"empty\.png.*empty"):
        io.read_image(tmp_path / "empty.png")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InputError, match=r"notes\.txt.*unsupported"):
        io.read_image(tmp_path / "notes.txt")
    with pytest.raises(InputError, match=r"notes\.txt.*unsupported"):
        io.read_volume(tmp_path / "notes.txt")


def test_missing_h5_key_lists_keys(tmp_path, volume16):
    io.write_volume(f"{tmp_path / 'a.h5'}:/raw", volume16)
    with pytest.raises(InputError, match=r"a\.h5.*no dataset 'labels'.*raw"):
        io.open_volume(f"{tmp_path / 'a.h5'}:/labels")


# ---------------------------------------------------------------------------------------------------------- to_uint8
def test_uint8_passes_through_unchanged():
    image = np.arange(256, dtype=np.uint8).reshape(16, 16)
    assert io.to_uint8(image) is image
    assert io.intensity_limits(image) == (0.0, 255.0)


def test_narrow_16bit_is_not_black(volume16):
    out = io.to_uint8(volume16)
    assert out.dtype == np.uint8
    assert out.min() == 0 and out.max() == 255
    assert 100 < out.mean() < 155  # uniform 1000..4000 spreads over the whole range (÷65535 gives ~10)


def test_float_with_negative_values():
    rng = np.random.default_rng(3)
    tomo = rng.normal(-0.05, 0.1, (4, 30, 30)).astype(np.float32)
    out = io.to_uint8(tomo)
    assert out.std() > 30 and 90 < out.mean() < 165
    lo, hi = io.intensity_limits(tomo)
    assert lo < 0 < hi


def test_percentile_clip_ignores_outliers():
    image = np.full((100, 100), 1000, np.uint16)
    image[:, 50:] = 2000
    image[0, 0] = 60000  # a hot pixel must not squash the range
    out = io.to_uint8(image)
    assert out[0, 1] == 0 and out[0, 99] == 255


def test_limits_make_streamed_slices_consistent(volume16):
    limits = io.intensity_limits(volume16)
    whole = io.to_uint8(volume16, limits)
    per_slice = np.stack([io.to_uint8(s, limits) for s in volume16])
    np.testing.assert_array_equal(whole, per_slice)


def test_limits_on_lazy_reader_sample_few_slices(tmp_path):
    rng = np.random.default_rng(4)
    big = rng.integers(0, 4096, (64, 40, 40)).astype(np.uint16)
    io.write_volume(f"{tmp_path / 'b.h5'}:/raw", big)
    with io.open_volume(f"{tmp_path / 'b.h5'}:/raw") as reader:
        lo, hi = io.intensity_limits(reader, max_samples=10_000)
        exact = np.percentile(big, [io.LOW_PERCENTILE, io.HIGH_PERCENTILE])
        assert abs(lo - exact[0]) < 60 and abs(hi - exact[1]) < 60
        assert io.to_uint8(reader.slice(0, 5), (lo, hi)).dtype == np.uint8


def test_constant_and_bool_inputs():
    assert not io.to_uint8(np.full((4, 4), 7.5)).any()
    np.testing.assert_array_equal(io.to_uint8(np.eye(3, dtype=bool)), np.eye(3, dtype=np.uint8) * 255)


@pytest.mark.parametrize("bad,match", [
    (np.array([[0.0, np.nan], [1.0, 2.0]]), "NaN or infinite"),
    (np.array([[0.0, np.inf], [1.0, 2.0]]), "NaN or infinite"),
    (np.zeros((0, 5)), "empty"),
    (np.arange(5.0), "2D or 3D"),
    (np.zeros((2, 2, 2, 2)), "2D or 3D"),
])
def test_to_uint8_rejects_bad_arrays(bad, match):
    with pytest.raises(InputError, match=match):
        to_uint8_named(bad)


def to_uint8_named(array):
    return io.to_uint8(array, name="scan.tif")


def test_to_uint8_message_names_the_source():
    with pytest.raises(InputError, match=r"^scan\.tif: contains NaN"):
        to_uint8_named(np.full((3, 3), np.nan))


# ---------------------------------------------------------------------------------------------------------- real data
def test_isbi_slices_read_and_stack(shared_data):
    files = sorted((shared_data / "isbi2012" / "train" / "images").glob("slice*.png"))
    assert len(files) == 30
    slices = [io.read_image(f) for f in files]
    assert all(s.shape == (512, 512) and s.dtype == np.uint8 for s in slices)
    volume = np.stack(slices)
    assert volume.shape == (30, 512, 512)
    assert io.to_uint8(volume) is volume
    labels = io.read_image(shared_data / "isbi2012" / "train" / "labels" / "slice00.png")
    assert set(np.unique(labels)) <= {0, 255}


def test_cryoet_float_tomogram(shared_data):
    with io.open_volume(shared_data / "cryoet" / "tomo.tif") as reader:
        assert reader.shape == (101, 135, 135) and reader.dtype == np.float32
        data = reader.read()
    assert data.min() < 0
    out = io.to_uint8(data)
    assert out.std() > 20 and 60 < out.mean() < 190
    assert np.count_nonzero(out == 0) < 0.01 * out.size and np.count_nonzero(out == 255) < 0.01 * out.size


def test_cem_examples(shared_data):
    cem = shared_data / "cem-examples"
    for image_path in sorted((cem / "correlation" / "images").glob("*.png")):
        image = io.read_image(image_path)
        mask = io.read_image(cem / "correlation" / "masks" / image_path.name)
        assert image.ndim == 2 and image.dtype == np.uint8 and mask.shape == image.shape
        assert set(np.unique(mask)) <= {0, 255}
    patches = [io.read_image(p) for p in sorted((cem / "occlusion").glob("*.tiff"))]
    assert len(patches) == 10
    assert all(p.dtype == np.uint8 and p.ndim == 2 and max(p.shape) == 224 for p in patches)


def test_tiff_stack_is_memory_mapped_when_possible(tmp_path, volume16):
    io.write_volume(tmp_path / "plain.tif", volume16, (7.0, 2.0, 2.0))
    with io.open_volume(tmp_path / "plain.tif") as reader:
        assert reader.lazy and isinstance(reader.array, np.memmap)
        assert reader.spacing == (7.0, 2.0, 2.0)
        np.testing.assert_array_equal(reader.slice(0, 4), volume16[4])
    io.write_volume(tmp_path / "packed.tif", volume16, (7.0, 2.0, 2.0), compress=True)
    with io.open_volume(tmp_path / "packed.tif") as reader:  # compressed: read into memory instead
        assert not reader.lazy
        np.testing.assert_array_equal(reader.read(), volume16)


def test_2d_hdf5_dataset_is_a_single_slice(tmp_path):
    import h5py

    with h5py.File(tmp_path / "img.h5", "w") as f:
        f["image"] = np.arange(20, dtype=np.uint16).reshape(4, 5)
    with io.open_volume(f"{tmp_path / 'img.h5'}:/image") as reader:
        assert reader.shape == (1, 4, 5)
        np.testing.assert_array_equal(reader[0], np.arange(20).reshape(4, 5))


def test_other_simpleitk_formats_are_read(tmp_path, volume16):
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(volume16)
    image.SetSpacing((1.0, 2.0, 3.0))
    sitk.WriteImage(image, str(tmp_path / "v.vtk"))
    data, spacing = io.read_volume(tmp_path / "v.vtk")
    np.testing.assert_array_equal(data, volume16)
    assert spacing == (3.0, 2.0, 1.0)


def test_simpleitk_volume_view_outlives_its_reader(tmp_path):
    """read_volume gives SimpleITK formats as a zero-copy view; slices of it must stay valid after the array
    itself is dropped and other volumes are read (a view that did not keep the image alive read freed memory)."""
    import gc

    from cellemnet.io import read_volume, write_volume

    first = (np.arange(8 * 64 * 64) % 251).astype(np.uint8).reshape(8, 64, 64)
    write_volume(tmp_path / "a.nrrd", first)
    write_volume(tmp_path / "b.nrrd", 255 - first)
    volume, _ = read_volume(tmp_path / "a.nrrd")
    part, transposed = np.asarray(volume)[3:5], volume[::2].T
    del volume
    gc.collect()
    filler = [np.full((8, 64, 64), 7, np.uint8) for _ in range(50)]
    second, _ = read_volume(tmp_path / "b.nrrd")
    assert np.array_equal(part, first[3:5]) and np.array_equal(transposed, first[::2].T)
    assert np.array_equal(second, 255 - first) and len(filler) == 50
    assert not second.flags.writeable  # a view of the image buffer: copy it to write
