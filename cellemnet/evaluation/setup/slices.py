"""Slice 3D volumes (and their label volumes) into 2D training images on chosen planes.

Planes are named `xy`, `xz`, `yz`. The paper's setup numbered them the SimpleITK way (axis 0 = x fixed = yz plane,
1 = xz, 2 = xy), and output names keep that number so that slices made here match the original's:
`{stem}_{axis}_{index}.tiff`, where stem is the file name up to its first dot. Unlike the original, the last slice
is included and a volume without labels (mask 'none') works.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cellemnet.errors import InputError
from cellemnet.io import intensity_limits, is_volume_file, open_volume, to_uint8, write_image

# plane -> (SimpleITK axis number used in file names, numpy axis of a (z, y, x) array that is held fixed)
PLANES = {"yz": (0, 2), "xz": (1, 1), "xy": (2, 0)}
SITK_AXIS_TO_PLANE = {sitk_axis: plane for plane, (sitk_axis, _) in PLANES.items()}


def parse_plane(value: str | int) -> str:
    """'xy'/'xz'/'yz', or the original's SimpleITK axis number 0/1/2, -> plane name."""
    text = str(value).strip().lower()
    if text in PLANES:
        return text
    if text in {"0", "1", "2"}:
        return SITK_AXIS_TO_PLANE[int(text)]
    raise InputError(f"unknown plane '{value}': use xy, xz, yz (or the SimpleITK axis numbers 2, 1, 0)")


def slice_indices(size: int, step: int = 1) -> range:
    """Indices of the slices to take along an axis of `size`, every `step`-th, last one included."""
    if step < 1:
        raise InputError(f"slice spacing must be at least 1, got {step}")
    return range(0, size, step)


def take_slice(volume, plane: str, index: int) -> np.ndarray:
    """One 2D slice of a (z, y, x) array-like (numpy, h5py, zarr or a VolumeReader)."""
    axis = PLANES[plane][1]
    key = [slice(None)] * 3
    key[axis] = index
    return np.asarray(volume[tuple(key)])


def slice_name(stem: str, plane: str, index: int) -> str:
    return f"{stem}_{PLANES[plane][0]}_{index}.tiff"


def label_slice_to_uint8(labels: np.ndarray, source: Path) -> np.ndarray:
    if labels.dtype == np.uint8:
        return labels
    if not np.issubdtype(labels.dtype, np.integer) and not np.issubdtype(labels.dtype, np.bool_):
        if not np.all(np.mod(labels, 1) == 0):
            raise InputError(f"{source}: labels must be whole numbers, got {labels.dtype} values with fractions")
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise InputError(f"{source}: labels must lie in 0..255 to be written as 8-bit masks")
    return labels.astype(np.uint8)


def slice_volume(
    image_path: str | os.PathLike,
    mask_path: str | os.PathLike | None,
    out_dir: str | os.PathLike,
    planes: tuple[str, ...] | list[str] = ("xy",),
    step: int = 1,
) -> int:
    """Write the slices of one volume to out_dir/images (and of its labels to out_dir/masks). Returns the count.

    Images that are not 8-bit are rescaled with one intensity range for the whole volume, so slices stay comparable.
    """
    from tqdm import tqdm

    image_path = Path(image_path)
    out_dir = Path(out_dir)
    stem = image_path.name.split(".")[0]
    image = open_volume(image_path)
    mask = open_volume(mask_path) if mask_path is not None else None
    try:
        if mask is not None and tuple(mask.shape) != tuple(image.shape):
            raise InputError(f"{mask_path}: shape {tuple(mask.shape)} differs from its volume's {tuple(image.shape)}")
        limits = None if image.dtype == np.uint8 else intensity_limits(image)
        jobs = [(p, i) for p in planes for i in slice_indices(image.shape[PLANES[p][1]], step)]
        for plane, index in tqdm(jobs, desc=f"slices {stem}", unit="slice"):
            name = slice_name(stem, plane, index)
            write_image(out_dir / "images" / name, to_uint8(take_slice(image, plane, index), limits))
            if mask is not None:
                labels = label_slice_to_uint8(take_slice(mask, plane, index), Path(mask_path))
                write_image(out_dir / "masks" / name, labels)
    finally:
        image.close()
        if mask is not None:
            mask.close()
    return len(jobs)


def slice_folder(
    image_dir: str | os.PathLike,
    mask_dir: str | os.PathLike | None,
    out_dir: str | os.PathLike,
    planes: tuple[str, ...] | list[str] = ("xy",),
    step: int = 1,
) -> int:
    """Slice every volume of a folder; its labels are the same-named files in mask_dir. Returns the slice count."""
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise InputError(f"{image_dir}: folder not found")
    volumes = sorted(p for p in image_dir.iterdir() if not p.name.startswith(".") and is_volume_file(p))
    if not volumes:
        raise InputError(f"{image_dir}: no volumes found")
    total = 0
    for path in volumes:
        mask_path = None
        if mask_dir is not None:
            mask_path = Path(mask_dir) / path.name
            if not mask_path.exists():
                raise InputError(f"{path}: no label volume with the same name in {mask_dir}")
        total += slice_volume(path, mask_path, out_dir, planes, step)
    return total
