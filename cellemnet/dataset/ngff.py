"""Sparse random ROI crops from large volumes: OME-Zarr/NGFF (local or remote through fsspec) and local files.

A large volume is tiled into cubes of ``crop_size``; a low-resolution reference (the coarsest OME-Zarr level,
or a strided view of a local volume) tells which cubes are mostly padding (voxels equal to ``padding_value``),
and a seeded random subset of the others, as many as fit in the size budget, is saved as nrrd with the voxel
spacing of the level read, in (z, y, x) order. ROI names: ``{volume}_s{level}-ROI-z{z0}-{z1}_y{y0}-{y1}_x{x0}-{x1}``
for OME-Zarr levels and ``{volume}-ROI-z..._y..._x...`` for local volumes; the part before ``-ROI-`` is the
dataset name used by later stages. Existing ROI files are kept, so an interrupted download resumes.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cellemnet.dataset.names import source_name
from cellemnet.dataset.tiling import grid_edges
from cellemnet.errors import InputError
from cellemnet.io import intensity_limits, open_volume, to_uint8, write_volume
from cellemnet.safepath import inside, path_component

MIN_CONTENT_FRACTION = 0.7  # a cube is kept when at most 30 % of it is padding


@dataclass
class CropReport:
    written: list[str] = field(default_factory=list)
    existing: int = 0
    candidates: int = 0
    errors: list[str] = field(default_factory=list)


def n_cubes_for(gigabytes: float, crop_size: int) -> int:
    """How many uint8 cubes of crop_size^3 fit in ``gigabytes`` (at least one)."""
    return max(1, int(gigabytes * 1024**3 // crop_size**3))


def cube_boxes(shape: Sequence[int], crop_size: int) -> np.ndarray:
    """(n, 6) boxes z0, y0, x0, z1, y1, x1 of the cube grid (edge cubes end at the border, as the patch grid)."""
    edges = [grid_edges(int(s), crop_size) for s in shape]
    return np.array(
        [(z0, y0, x0, z1, y1, x1) for z0, z1 in edges[0] for y0, y1 in edges[1] for x0, x1 in edges[2]],
        dtype=np.int64,
    ).reshape(-1, 6)


def content_boxes(
    boxes: np.ndarray, shape: Sequence[int], reference, padding_value: float, min_fraction: float = MIN_CONTENT_FRACTION
) -> np.ndarray:
    """The boxes whose footprint in ``reference`` (a coarser view of the same volume) is mostly not padding."""
    reference = np.asarray(reference)
    ratio = np.array(reference.shape, dtype=float) / np.array(shape, dtype=float)
    keep = []
    for box in boxes:
        lo = np.floor(box[:3] * ratio).astype(int)
        hi = np.maximum(np.ceil(box[3:] * ratio).astype(int), lo + 1)
        part = reference[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
        if part.size and np.mean(part == padding_value) <= 1.0 - min_fraction:
            keep.append(box)
    return np.array(keep, dtype=np.int64).reshape(-1, 6)


def choose_boxes(boxes: np.ndarray, n: int, seed: int) -> np.ndarray:
    """A seeded random subset of n boxes (all when fewer), in grid order."""
    if len(boxes) <= n:
        return boxes
    picks = np.sort(np.random.default_rng(seed).choice(len(boxes), size=n, replace=False))
    return boxes[picks]


def roi_name(volume: str, box: Sequence[int]) -> str:
    z0, y0, x0, z1, y1, x1 = (int(v) for v in box)
    return f"{volume}-ROI-z{z0}-{z1}_y{y0}-{y1}_x{x0}-{x1}"


def _save_crops(array, boxes, volume_name, save_dir, spacing, limits, invert, report: CropReport, progress) -> None:
    from tqdm import tqdm

    path_component(volume_name, "volume name")
    for box in tqdm(boxes, desc=volume_name, disable=not progress, leave=False):
        out = inside(save_dir, Path(save_dir) / f"{roi_name(volume_name, box)}.nrrd", volume_name)
        if out.exists():
            report.existing += 1
            continue
        z0, y0, x0, z1, y1, x1 = (int(v) for v in box)
        crop = np.asarray(array[z0:z1, y0:y1, x0:x1])
        crop = to_uint8(crop, limits, name=volume_name)
        if invert:
            crop = 255 - crop
        write_volume(out, crop, spacing=spacing)
        report.written.append(str(out))


# ----------------------------------------------------------------------------------------------- OME-Zarr


@dataclass
class NgffLevel:
    array: Any  # (z, y, x) lazy view
    spacing: tuple[float, float, float]
    reference: Any  # (z, y, x) lazy view of the coarsest level


class _SpatialView:
    """(z, y, x) view of an N-D OME-Zarr array: non-spatial axes (t, c) at index 0, spatial axes reordered."""

    def __init__(self, array, spatial: list[int]):
        self._array = array
        self._spatial = spatial
        self.shape = tuple(int(array.shape[i]) for i in spatial)
        self.dtype = array.dtype
        self.ndim = 3

    def __getitem__(self, key) -> np.ndarray:
        full: list[Any] = [0] * self._array.ndim
        for axis, k in zip(self._spatial, key):
            if not isinstance(k, slice):
                raise TypeError("index the spatial view with slices")
            full[axis] = k
        data = np.asarray(self._array[tuple(full)])
        stored = sorted(self._spatial)
        return np.transpose(data, [stored.index(a) for a in self._spatial])


def _spatial_view(array, axes: list | None, where: str):
    """A (z, y, x) view and the positions of z, y, x among the array's axes (from the OME axes metadata)."""
    names = [a.get("name", "") if isinstance(a, dict) else str(a) for a in axes] if axes else None
    if names is None:
        if array.ndim != 3:
            raise InputError(f"{where}: {array.ndim}-D array without OME axes metadata")
        return array, [0, 1, 2]
    spatial = [names.index(n) for n in ("z", "y", "x") if n in names]
    if len(spatial) != 3:
        raise InputError(f"{where}: needs z, y and x axes, found {names}")
    if spatial == [0, 1, 2] and array.ndim == 3:
        return array, spatial
    return _SpatialView(array, spatial), spatial


def open_ngff_level(url: str, level: int = 0, storage_options: dict | None = None) -> NgffLevel:
    """Open one resolution level of an OME-Zarr image (path or fsspec URL) with its (z, y, x) spacing."""
    import zarr

    try:
        group = zarr.open_group(url, mode="r", storage_options=storage_options) if storage_options else \
            zarr.open_group(url, mode="r")
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"{url}: cannot open as an OME-Zarr group ({type(exc).__name__}: {exc})") from None
    attrs = dict(group.attrs)
    multiscales = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
    if not multiscales:
        raise InputError(f"{url}: no OME-Zarr 'multiscales' metadata")
    meta = multiscales[0]
    datasets = meta["datasets"]
    if not 0 <= level < len(datasets):
        raise InputError(f"{url}: has resolution levels 0..{len(datasets) - 1}, not {level}")
    axes = meta.get("axes")

    def level_array(i: int):
        array = group[datasets[i]["path"]]
        scale = [1.0] * array.ndim
        for transform in datasets[i].get("coordinateTransformations", []):
            if transform.get("type") == "scale":
                scale = [float(s) for s in transform["scale"]]
        view, spatial = _spatial_view(array, axes, url)
        return view, tuple(scale[j] for j in spatial)

    array, spacing = level_array(level)
    reference, _ = level_array(len(datasets) - 1)
    return NgffLevel(array, spacing, reference)


def crop_ngff(
    url: str,
    volume_name: str,
    save_dir: str | os.PathLike,
    gigabytes: float,
    level: int = 0,
    crop_size: int = 256,
    padding_value: float = 0,
    invert: bool = False,
    seed: int = 0,
    storage_options: dict | None = None,
    progress: bool = False,
) -> CropReport:
    """Save sparse random cubes of one OME-Zarr level as nrrd files with that level's spacing."""
    report = CropReport()
    ngff = open_ngff_level(url, level, storage_options)
    shape = tuple(int(s) for s in ngff.array.shape)
    reference = np.asarray(ngff.reference[:, :, :])
    boxes = content_boxes(cube_boxes(shape, crop_size), shape, reference, padding_value)
    report.candidates = len(boxes)
    chosen = choose_boxes(boxes, n_cubes_for(gigabytes, crop_size), seed)
    limits = intensity_limits(reference, name=url)  # one intensity mapping for every cube of the volume
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    _save_crops(ngff.array, chosen, f"{volume_name}_s{level}", save_dir, ngff.spacing, limits, invert, report,
                progress)
    return report


_TRUE = {"1", "true", "yes", "y", "t"}


def read_ngff_csv(path: str | os.PathLike) -> list[dict]:
    """Rows of a download list: ``url`` (or ``download_url``), ``volume_name``; optional ``mip`` (level),
    ``crop_size``, ``invert``, ``padding_value``, ``anonymous`` (S3 without credentials)."""
    path = Path(path)
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    out = []
    for i, row in enumerate(rows, start=2):
        url = (row.get("download_url") or row.get("url") or "").strip()
        name = (row.get("volume_name") or "").strip()
        if not url or not name:
            raise InputError(f"{path}: line {i} needs 'url' (or 'download_url') and 'volume_name'")
        path_component(name, f"{path}: line {i}, column 'volume_name'")  # it becomes part of every ROI file name
        try:
            out.append({
                "url": url,
                "volume_name": name,
                "level": int(row.get("mip") or 0),
                "crop_size": int(row.get("crop_size") or 256),
                "invert": str(row.get("invert") or "").strip().lower() in _TRUE,
                "padding_value": float(row.get("padding_value") or 0),
                "anonymous": str(row.get("anonymous") or row.get("source") or "").strip().lower()
                in _TRUE | {"openorganelle"},
            })
        except ValueError as exc:
            raise InputError(f"{path}: line {i}: {exc}") from None
    return out


# ----------------------------------------------------------------------------------------------- local volumes


def crop_local_volume(
    path: str | os.PathLike,
    save_dir: str | os.PathLike,
    gigabytes: float,
    crop_size: int = 256,
    padding_value: float = 0,
    seed: int = 0,
    reference_step: int | None = None,
    progress: bool = False,
) -> CropReport:
    """Split a large local volume into sparse random ROI cubes (nrrd, source spacing)."""
    report = CropReport()
    with open_volume(path) as reader:
        shape = reader.shape
        step = reference_step or max(1, crop_size // 16)
        reference = np.asarray(reader[::step, ::step, ::step])  # a strided look is enough to find padding
        boxes = content_boxes(cube_boxes(shape, crop_size), shape, reference, padding_value)
        report.candidates = len(boxes)
        chosen = choose_boxes(boxes, n_cubes_for(gigabytes, crop_size), seed)
        limits = intensity_limits(reader) if reader.dtype != np.uint8 else None
        Path(save_dir).mkdir(parents=True, exist_ok=True)
        _save_crops(reader, chosen, source_name(Path(str(path)).name), save_dir, reader.spacing, limits, False,
                    report, progress)
    return report
