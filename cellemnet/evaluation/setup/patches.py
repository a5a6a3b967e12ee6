"""Cut 2D images (and their masks) into square patches, as the all_mito training set is built.

Tiles cover the whole image. When a side is a multiple of the crop size they touch; otherwise one more tile is
added and all of them are spread evenly with overlap, so the last tile ends exactly at the border. An image
smaller than the crop size gives one smaller tile (training pads it). Patch names are
`{prefix}{stem}_{y0}_{x0}{suffix}`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import numpy as np

from cellemnet.errors import InputError
from cellemnet.io import is_image_file, read_image, write_image

DEFAULT_PATCH_SIZE = 256
# all_mito drops patches whose image is mostly empty padding: fewer than this fraction of pixels above 0.
MIN_NONZERO_FRACTION = 0.05


def spread_tile_starts(size: int, crop: int) -> list[int]:
    """Start offsets of `crop`-sized tiles along one side of `size` pixels, the overlap spread evenly over the gaps
    (the original's patch rule; inference tiles with a fixed overlap: predict.overlapping_tile_starts)."""
    if crop <= 0:
        raise ValueError(f"crop size must be positive, got {crop}")
    if size <= crop:
        return [0]
    if size % crop == 0:
        return list(range(0, size, crop))
    n = size // crop + 1
    overlap = n * crop - size  # spread over the n-1 gaps; integer maths, so sizes above 255 work too
    return [i * crop - (i * overlap) // (n - 1) for i in range(n)]


def patch_boxes(shape: tuple[int, int], crop: int) -> Iterator[tuple[int, int, int, int]]:
    """(y0, y1, x0, x1) of every tile of a 2D image of `shape`."""
    h, w = shape
    for y0 in spread_tile_starts(h, crop):
        for x0 in spread_tile_starts(w, crop):
            yield y0, min(y0 + crop, h), x0, min(x0 + crop, w)


def patch_name(stem: str, y0: int, x0: int, suffix: str, prefix: str = "") -> str:
    return f"{prefix}{stem}_{y0}_{x0}{suffix}"


def mostly_empty(patch: np.ndarray, min_fraction: float = MIN_NONZERO_FRACTION) -> bool:
    """True when fewer than min_fraction of the pixels are above zero (black padding around the data)."""
    return np.count_nonzero(patch > 0) < min_fraction * patch.size


def list_images(folder: Path) -> list[Path]:
    """The images of a folder (hidden files left out), sorted; an error when there are none."""
    if not folder.is_dir():
        raise InputError(f"{folder}: folder not found")
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and is_image_file(p))
    if not files:
        raise InputError(f"{folder}: no images found")
    return files


def patch_folder(
    image_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    crop: int = DEFAULT_PATCH_SIZE,
    label: int | None = None,
    prefix: str = "",
) -> int:
    """Cut every image of a folder into patches (the create_patches command). Returns the number written.

    With `label`, each patch is written as the binary mask (patch == label), 0/1 uint8.
    """
    from tqdm import tqdm

    count = 0
    out_dir = Path(out_dir)
    for path in tqdm(list_images(Path(image_dir)), desc="patches", unit="image"):
        image = read_image(path)
        stem = path.name.split(".")[0]
        for y0, y1, x0, x1 in patch_boxes(image.shape[:2], crop):
            patch = image[y0:y1, x0:x1]
            if label is not None:
                patch = (patch == label).astype(np.uint8)
            write_image(out_dir / patch_name(stem, y0, x0, path.suffix, prefix), patch)
            count += 1
    return count


def patch_pairs(
    image_dir: str | os.PathLike,
    mask_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    label: int,
    crop: int = DEFAULT_PATCH_SIZE,
    prefix: str = "",
    min_fraction: float = MIN_NONZERO_FRACTION,
) -> tuple[int, int]:
    """Patch images and their same-named masks into out_dir/{images,masks}; masks become (mask == label) 0/1.

    Patches whose image is mostly empty are skipped with their masks. Returns (written, skipped).
    """
    from tqdm import tqdm

    out_dir, mask_dir = Path(out_dir), Path(mask_dir)
    written = skipped = 0
    for path in tqdm(list_images(Path(image_dir)), desc=f"patches {prefix or ''}".strip(), unit="image"):
        mask_path = mask_dir / path.name
        if not mask_path.is_file():
            raise InputError(f"{path}: no mask with the same name in {mask_dir}")
        image, mask = read_image(path), read_image(mask_path)
        if image.shape[:2] != mask.shape[:2]:
            raise InputError(f"{mask_path}: shape {mask.shape} differs from its image's {image.shape}")
        stem = path.name.split(".")[0]
        for y0, y1, x0, x1 in patch_boxes(image.shape[:2], crop):
            patch = image[y0:y1, x0:x1]
            if mostly_empty(patch, min_fraction):
                skipped += 1
                continue
            name = patch_name(stem, y0, x0, path.suffix, prefix)
            write_image(out_dir / "images" / name, patch)
            write_image(out_dir / "masks" / name, (mask[y0:y1, x0:x1] == label).astype(np.uint8))
            written += 1
    return written, skipped
