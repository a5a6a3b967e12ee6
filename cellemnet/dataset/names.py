"""Patch names: the one place that formats and parses them.

A name records where a patch was cut, so later stages (filtering, reconstruct3d) can find it again:

* 3D: ``{volume}-LOC-{axis}_{slice}_{y0}-{y1}_{x0}-{x1}``. ``axis`` is the numpy axis of the (z, y, x) volume that
  was sliced (0 = xy plane, 1 = xz, 2 = yz); ``y0..y1`` / ``x0..x1`` are the row / column ranges inside that cross
  section (axis 1: rows = z, columns = x; axis 2: rows = z, columns = y).
* 2D: ``{image stem}-LOC-2d-{y0}-{y1}_{x0}-{x1}``.
* A subvolume rebuilt around a 3D patch: ``{volume}-LOC-{axis}_{low}-{high}_{y0}-{y1}_{x0}-{x1}`` where
  ``low..high`` is the slice range (end exclusive).

All ranges are half-open (end exclusive). The source may itself contain ``-LOC-`` only if it is never
parsed back; the parser splits at the last ``-LOC-``. A volume name's part before ``-ROI-`` is its dataset.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

LOC = "-LOC-"
ROI = "-ROI-"
AXIS_2D = "2d"

_LOC_3D = re.compile(r"^(?P<axis>[012])_(?P<slice>\d+)_(?P<y0>\d+)-(?P<y1>\d+)_(?P<x0>\d+)-(?P<x1>\d+)$")
_LOC_2D = re.compile(r"^2d-(?P<y0>\d+)-(?P<y1>\d+)_(?P<x0>\d+)-(?P<x1>\d+)$")
_LOC_SUB = re.compile(
    r"^(?P<axis>[012])_(?P<low>\d+)-(?P<high>\d+)_(?P<y0>\d+)-(?P<y1>\d+)_(?P<x0>\d+)-(?P<x1>\d+)$"
)
# File suffixes a patch may be saved under (stripped before parsing).
_SUFFIXES = (".tiff", ".tif", ".png", ".jpg", ".jpeg", ".npy", ".nrrd")


@dataclass(frozen=True)
class PatchLocation:
    """Where a patch came from. ``axis`` and ``slice`` are None for 2D patches."""

    source: str
    y0: int
    y1: int
    x0: int
    x1: int
    axis: int | None = None
    slice: int | None = None

    @property
    def is_3d(self) -> bool:
        return self.axis is not None

    @property
    def shape(self) -> tuple[int, int]:
        return (self.y1 - self.y0, self.x1 - self.x0)

    @property
    def dataset(self) -> str:
        return dataset_name(self.source)

    @property
    def name(self) -> str:
        return format_name(self.source, self.y0, self.y1, self.x0, self.x1, axis=self.axis, slice_index=self.slice)


@dataclass(frozen=True)
class SubvolumeLocation:
    """A stack of ``high - low`` cross sections around a 3D patch (see :func:`format_subvolume_name`)."""

    source: str
    axis: int
    low: int
    high: int
    y0: int
    y1: int
    x0: int
    x1: int


def _check_source(source: str) -> str:
    source = str(source)
    if not source:
        raise ValueError("patch source name is empty")
    if "/" in source or "\\" in source:
        raise ValueError(f"patch source name {source!r} must not contain a path separator")
    return source


def _check_box(y0: int, y1: int, x0: int, x1: int) -> tuple[int, int, int, int]:
    box = tuple(int(v) for v in (y0, y1, x0, x1))
    if min(box) < 0 or box[1] <= box[0] or box[3] <= box[2]:
        raise ValueError(f"bad patch box y {box[0]}-{box[1]}, x {box[2]}-{box[3]}")
    return box  # type: ignore[return-value]


def format_name(
    source: str, y0: int, y1: int, x0: int, x1: int, axis: int | None = None, slice_index: int | None = None
) -> str:
    """The name of a patch; 3D when ``axis`` is given (then ``slice_index`` is required), else 2D."""
    source = _check_source(source)
    y0, y1, x0, x1 = _check_box(y0, y1, x0, x1)
    if axis is None:
        if slice_index is not None:
            raise ValueError("a 2D patch has no slice index")
        return f"{source}{LOC}{AXIS_2D}-{y0}-{y1}_{x0}-{x1}"
    if int(axis) not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2, got {axis!r}")
    if slice_index is None or int(slice_index) < 0:
        raise ValueError(f"a 3D patch needs a slice index >= 0, got {slice_index!r}")
    return f"{source}{LOC}{int(axis)}_{int(slice_index)}_{y0}-{y1}_{x0}-{x1}"


def _strip_suffix(name: str) -> str:
    lower = name.lower()
    for suffix in _SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


def parse_name(name: str) -> PatchLocation:
    """Inverse of :func:`format_name`. Accepts a file name (a known image suffix is dropped) or a bare name."""
    stem = _strip_suffix(str(name).rsplit("/", 1)[-1])
    source, sep, loc = stem.rpartition(LOC)
    if not sep or not source:
        raise ValueError(f"not a patch name (no '{LOC}'): {name!r}")
    match = _LOC_3D.match(loc)
    if match:
        g = {k: int(v) for k, v in match.groupdict().items()}
        return PatchLocation(source, g["y0"], g["y1"], g["x0"], g["x1"], axis=g["axis"], slice=g["slice"])
    match = _LOC_2D.match(loc)
    if match:
        g = {k: int(v) for k, v in match.groupdict().items()}
        return PatchLocation(source, g["y0"], g["y1"], g["x0"], g["x1"])
    raise ValueError(f"not a patch name (bad location {loc!r}): {name!r}")


def is_patch_name(name: str) -> bool:
    try:
        parse_name(name)
    except ValueError:
        return False
    return True


def format_subvolume_name(source: str, axis: int, low: int, high: int, y0: int, y1: int, x0: int, x1: int) -> str:
    """Name of a subvolume (flipbook) of slices ``low..high`` (end exclusive) around a 3D patch."""
    source = _check_source(source)
    y0, y1, x0, x1 = _check_box(y0, y1, x0, x1)
    if int(axis) not in (0, 1, 2) or int(low) < 0 or int(high) <= int(low):
        raise ValueError(f"bad subvolume axis {axis} / slice range {low}-{high}")
    return f"{source}{LOC}{int(axis)}_{int(low)}-{int(high)}_{y0}-{y1}_{x0}-{x1}"


def parse_subvolume_name(name: str) -> SubvolumeLocation:
    stem = _strip_suffix(str(name).rsplit("/", 1)[-1])
    source, sep, loc = stem.rpartition(LOC)
    match = _LOC_SUB.match(loc) if sep and source else None
    if not match:
        raise ValueError(f"not a subvolume name: {name!r}")
    g = {k: int(v) for k, v in match.groupdict().items()}
    return SubvolumeLocation(source, g["axis"], g["low"], g["high"], g["y0"], g["y1"], g["x0"], g["x1"])


def dataset_name(source: str) -> str:
    """The dataset a source belongs to: everything before ``-ROI-`` (all ROIs cut from one volume share it)."""
    return str(source).split(ROI, 1)[0]


def source_name(path_or_name: str) -> str:
    """A source name from a file name: the stem without any of its suffixes (``a.nii.gz`` -> ``a``).

    Only known multi-part suffixes are stripped, so dotted names such as ``cell_1.5nm.tif`` keep their dot.
    """
    name = str(path_or_name).rstrip("/").rsplit("/", 1)[-1]
    lower = name.lower()
    for suffix in (".nii.gz", ".ome.zarr", ".ome.tiff", ".ome.tif"):
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    stem, dot, _ = name.rpartition(".")
    return stem if dot and stem else name
