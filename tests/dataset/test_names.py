"""The patch name scheme: format and parse are inverses, bad names are refused."""
import pytest

from cellemnet.dataset.names import (
    PatchLocation,
    dataset_name,
    format_name,
    format_subvolume_name,
    is_patch_name,
    parse_name,
    parse_subvolume_name,
    source_name,
)


def test_3d_name_format_and_parse():
    name = format_name("vol-ROI-x0-256_y0-256_z0-256", 0, 224, 224, 448, axis=2, slice_index=17)
    assert name == "vol-ROI-x0-256_y0-256_z0-256-LOC-2_17_0-224_224-448"
    loc = parse_name(name)
    assert loc == PatchLocation("vol-ROI-x0-256_y0-256_z0-256", 0, 224, 224, 448, axis=2, slice=17)
    assert loc.is_3d and loc.shape == (224, 224)
    assert loc.dataset == "vol"
    assert loc.name == name


def test_2d_name_keeps_image_stem():
    name = format_name("slice_07", 224, 400, 0, 224)
    assert name == "slice_07-LOC-2d-224-400_0-224"
    loc = parse_name(name + ".tiff")
    assert loc.source == "slice_07" and loc.axis is None and loc.slice is None
    assert (loc.y0, loc.y1, loc.x0, loc.x1) == (224, 400, 0, 224)
    assert loc.shape == (176, 224)


def test_parse_splits_at_last_loc_and_accepts_zero_padding():
    loc = parse_name("a-LOC-b-LOC-1_0007_0-10_5-9")
    assert loc.source == "a-LOC-b" and loc.slice == 7 and loc.axis == 1


@pytest.mark.parametrize(
    "bad",
    ["noloc", "-LOC-0_1_0-1_0-1", "v-LOC-3_1_0-1_0-1", "v-LOC-0_1_0-1", "v-LOC-2d-0-1", "v-LOC-0_a_0-1_0-1"],
)
def test_bad_names_are_refused(bad):
    assert not is_patch_name(bad)
    with pytest.raises(ValueError):
        parse_name(bad)


@pytest.mark.parametrize(
    "kwargs",
    [dict(y0=5, y1=5, x0=0, x1=1), dict(y0=-1, y1=5, x0=0, x1=1), dict(y0=0, y1=5, x0=0, x1=1, axis=4, slice_index=0),
     dict(y0=0, y1=5, x0=0, x1=1, axis=0), dict(y0=0, y1=5, x0=0, x1=1, slice_index=3)],
)
def test_format_refuses_inconsistent_locations(kwargs):
    with pytest.raises(ValueError):
        format_name("v", **kwargs)


def test_source_with_path_separator_is_refused():
    with pytest.raises(ValueError):
        format_name("a/b", 0, 1, 0, 1)


def test_subvolume_names_round_trip():
    name = format_subvolume_name("vol", 1, 3, 8, 0, 224, 10, 234)
    assert name == "vol-LOC-1_3-8_0-224_10-234"
    sub = parse_subvolume_name(name + ".tif")
    assert (sub.source, sub.axis, sub.low, sub.high, sub.x1) == ("vol", 1, 3, 8, 234)
    assert not is_patch_name(name)  # a subvolume is not a patch


def test_dataset_and_source_names():
    assert dataset_name("hela-ROI-z0-256_y0-256_x0-256") == "hela"
    assert dataset_name("hela") == "hela"
    assert source_name("/x/y/brain.nii.gz") == "brain"
    assert source_name("cell_1.5nm.tif") == "cell_1.5nm"
    assert source_name("data.ome.zarr/") == "data"
    assert source_name("noext") == "noext"
