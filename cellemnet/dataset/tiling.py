"""Where patches are cut: the tile grid of a 2D image or cross section, and which cross sections of a volume."""
from __future__ import annotations

from typing import Sequence

import numpy as np

# A volume whose z spacing differs from its x spacing by more than this fraction is cut on xy only.
ANISOTROPY_LIMIT = 0.25


def grid_edges(size: int, crop_size: int) -> list[tuple[int, int]]:
    """Tile ranges along one side: max(1, round(size / crop_size)) tiles starting at multiples of crop_size.

    The last tile ends at the border, so it may be shorter than crop_size; a remainder shorter than about half a
    tile is left out (Python's round, as the original).
    """
    if size <= 0 or crop_size <= 0:
        raise ValueError(f"size and crop size must be positive, got {size} and {crop_size}")
    n = max(1, round(size / crop_size))
    return [(k * crop_size, min((k + 1) * crop_size, size)) for k in range(n)]


def grid_boxes(height: int, width: int, crop_size: int) -> np.ndarray:
    """(n, 4) int64 boxes (y0, y1, x0, x1) of the tile grid of a height x width image, row by row."""
    rows = grid_edges(height, crop_size)
    cols = grid_edges(width, crop_size)
    return np.array([(y0, y1, x0, x1) for y0, y1 in rows for x0, x1 in cols], dtype=np.int64).reshape(-1, 4)


def cross_section_shape(shape: Sequence[int], axis: int) -> tuple[int, int]:
    """(rows, cols) of a cross section perpendicular to ``axis`` of a (z, y, x) volume.

    axis 0: (y, x); axis 1: (z, x); axis 2: (z, y).
    """
    z, y, x = (int(s) for s in shape)
    return {0: (y, x), 1: (z, x), 2: (z, y)}[axis]


def is_anisotropic(spacing: Sequence[float], name: str = "") -> bool:
    """True when a volume should only be cut on xy: z spacing off x spacing by > 25 %, or 'video' in its name."""
    sz, _, sx = (float(s) for s in spacing)
    if "video" in name.lower():
        return True
    return sx > 0 and abs(sx - sz) / sx > ANISOTROPY_LIMIT


def usable_axes(
    shape: Sequence[int], spacing: Sequence[float], name: str, axes: Sequence[int], crop_size: int
) -> tuple[list[int], dict[int, str]]:
    """The axes to cut, and for each requested axis left out, why.

    Anisotropic volumes and videos are cut on axis 0 only. A cross section shorter than half the crop size in
    either dimension is skipped (thin stacks would otherwise give slivers).
    """
    skipped: dict[int, str] = {}
    requested = sorted(set(int(a) for a in axes))
    for a in requested:
        if a not in (0, 1, 2):
            raise ValueError(f"axes must be 0, 1 or 2, got {a}")
    if is_anisotropic(spacing, name):
        why = "video" if "video" in name.lower() else f"anisotropic spacing {tuple(float(s) for s in spacing)}"
        for a in requested:
            if a != 0:
                skipped[a] = f"{why}: cut on xy only"
        requested = [a for a in requested if a == 0]
    usable = []
    for a in requested:
        rows, cols = cross_section_shape(shape, a)
        if rows < crop_size / 2 or cols < crop_size / 2:
            skipped[a] = f"cross section {rows}x{cols} is shorter than half the crop size {crop_size}"
        else:
            usable.append(a)
    return usable, skipped
