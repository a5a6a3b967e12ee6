"""dHash of patches, bit for bit equal to the original's imagehash call, and a fast batch version.

The original hashed ``imagehash.dhash(Image.fromarray(patch).resize((cs, cs), BILINEAR), hash_size)``: the
patch is stretched to cs x cs (so small edge patches are not more likely to look unique), shrunk with LANCZOS to
(hash_size + 1) x hash_size, and each bit says whether a pixel is brighter than its left neighbour.

Pillow's 8-bit resampling is fixed point and deterministic: per axis it normalises the filter weights, rounds
them to integers with 22 fraction bits, runs the horizontal pass and then the vertical one, and after each pass
adds 2**21, shifts right by 22 and clips to 0..255. This module rebuilds the weights the same way (double
precision, ``math.sin``) and runs the passes in compiled integer code, so the bits are identical while most of
the time Pillow spends is saved (the horizontal LANCZOS pass is vectorised; nothing is allocated per patch).
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import numba
import numpy as np
from numba import prange

from cellemnet.constants import DEFAULT_CROP_SIZE, DEFAULT_HASH_SIZE

_PRECISION_BITS = 32 - 8 - 2  # Pillow's Resample.c
_HALF = 1 << (_PRECISION_BITS - 1)
_FILTER_SUPPORT = {"bilinear": 1.0, "lanczos": 3.0}


def _bilinear(x: float) -> float:
    x = -x if x < 0.0 else x
    return 1.0 - x if x < 1.0 else 0.0


def _sinc(x: float) -> float:
    if x == 0.0:
        return 1.0
    x = x * math.pi
    return math.sin(x) / x


def _lanczos(x: float) -> float:
    if -3.0 <= x < 3.0:
        return _sinc(x) * _sinc(x / 3.0)
    return 0.0


_FILTERS = {"bilinear": _bilinear, "lanczos": _lanczos}


@functools.lru_cache(maxsize=256)
def resample_weights(in_size: int, out_size: int, kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pillow's fixed-point weights for resampling one axis from ``in_size`` to ``out_size`` pixels.

    Returns (first input index, number of taps, int32 weights of shape (out_size, max taps)).
    """
    support0 = _FILTER_SUPPORT[kind]
    filt = _FILTERS[kind]
    scale = float(in_size) / out_size
    filterscale = max(scale, 1.0)
    support = support0 * filterscale
    ksize = int(math.ceil(support)) * 2 + 1
    starts = np.zeros(out_size, dtype=np.int64)
    counts = np.zeros(out_size, dtype=np.int64)
    weights = np.zeros((out_size, ksize), dtype=np.int32)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        ss = 1.0 / filterscale
        xmin = max(int(center - support + 0.5), 0)  # int() truncates like the C cast
        xmax = min(int(center + support + 0.5), in_size) - xmin
        w = [filt((x + xmin - center + 0.5) * ss) for x in range(xmax)]
        total = 0.0
        for v in w:
            total += v
        for x, v in enumerate(w):
            if total != 0.0:
                v = v / total
            weights[xx, x] = int(-0.5 + v * (1 << _PRECISION_BITS)) if v < 0 else int(0.5 + v * (1 << _PRECISION_BITS))
        starts[xx] = xmin
        counts[xx] = xmax
    for arr in (starts, counts, weights):
        arr.setflags(write=False)
    return starts, counts, weights


@numba.njit(cache=True, inline="always")
def _clip8(value: np.int64) -> np.uint8:
    value = value >> _PRECISION_BITS
    if value < 0:
        return np.uint8(0)
    if value > 255:
        return np.uint8(255)
    return np.uint8(value)


@numba.njit(cache=True)
def _horizontal(src, row0, row_step, n_rows, x0, starts, counts, weights, out):
    """out[r, xx] = clip8(sum_t src[row0 + r * row_step, x0 + starts[xx] + t] * weights[xx, t]), r < n_rows.

    A row step other than 1 reads a cross section straight out of a flattened stack of slices.
    """
    for r in range(n_rows):
        row = src[row0 + r * row_step]
        for xx in range(starts.shape[0]):
            n = counts[xx]
            base = x0 + starts[xx]
            # slices (not 2D indexing) let LLVM vectorise this dot product
            seg = row[base : base + n]
            w = weights[xx, :n]
            acc = np.int64(_HALF)
            for t in range(n):
                acc += np.int64(seg[t]) * w[t]
            out[r, xx] = _clip8(acc)


@numba.njit(cache=True)
def _vertical_t(src_t, starts, counts, weights, out):
    """Vertical pass on a transposed image: out[yy, x] = clip8(sum_t src_t[x, starts[yy] + t] * weights[yy, t])."""
    for yy in range(starts.shape[0]):
        n = counts[yy]
        base = starts[yy]
        w = weights[yy, :n]
        for x in range(src_t.shape[0]):
            seg = src_t[x, base : base + n]
            acc = np.int64(_HALF)
            for t in range(n):
                acc += np.int64(seg[t]) * w[t]
            out[yy, x] = _clip8(acc)


@numba.njit(cache=True)
def _vertical_rows(src, row0, row_step, x0, width, starts, counts, weights, acc, out):
    """Vertical pass row by row: out[yy, c] = clip8(sum_t src[row0 + (starts[yy] + t) * row_step, x0 + c] * w).

    Accumulating whole rows keeps the inner loop contiguous (vectorised) for wide outputs; acc is scratch of
    at least ``width`` int64.
    """
    a = acc[:width]
    for yy in range(starts.shape[0]):
        a[:] = _HALF
        for t in range(counts[yy]):
            w = np.int64(weights[yy, t])
            row = src[row0 + (starts[yy] + t) * row_step, x0 : x0 + width]
            for c in range(width):
                a[c] += np.int64(row[c]) * w
        dst = out[yy]
        for c in range(width):
            dst[c] = _clip8(a[c])


@numba.njit(cache=True)
def _bits(small):
    """dHash bits of the (hash_size, hash_size + 1) image, row-major, first bit most significant."""
    h = np.uint64(0)
    for r in range(small.shape[0]):
        for c in range(small.shape[1] - 1):
            h = (h << np.uint64(1)) | np.uint64(1 if small[r, c + 1] > small[r, c] else 0)
    return h


@numba.njit(cache=True)
def _hash_box_range(
    start, stop, image, boxes, table_of_box,
    bl_hs, bl_hc, bl_hw, bl_vs, bl_vc, bl_vw, bl_need_h, bl_need_v,
    lz_hs, lz_hc, lz_hw, lz_vs, lz_vc, lz_vw,
    crop_size, out,
):
    """Hash boxes start..stop of ``image``, each (first row, row step, rows, x0, x1); boxes smaller than
    crop_size are first stretched bilinearly, as Pillow's resize would."""
    n_cols = lz_hs.shape[0]
    n_rows = lz_vs.shape[0]
    stretched = np.empty((crop_size, crop_size), dtype=np.uint8)
    stretch_tmp = np.empty((crop_size, crop_size), dtype=np.uint8)
    acc = np.empty(crop_size, dtype=np.int64)
    narrow = np.empty((crop_size, n_cols), dtype=np.uint8)
    narrow_t = np.empty((n_cols, crop_size), dtype=np.uint8)
    small = np.empty((n_rows, n_cols), dtype=np.uint8)
    for b in range(start, stop):
        row0 = boxes[b, 0]
        step = boxes[b, 1]
        h = boxes[b, 2]
        x0 = boxes[b, 3]
        k = table_of_box[b]
        if k < 0:  # already crop_size x crop_size: Pillow's BILINEAR resize is a plain copy
            src = image
            sy0 = row0
            sstep = step
            sx0 = x0
        else:
            # bilinear stretch to crop_size x crop_size: horizontal pass first (skipped when the width already
            # fits), then the vertical one (skipped when the height fits), as Pillow does
            if bl_need_h[k]:
                _horizontal(image, row0, step, h, x0, bl_hs[k], bl_hc[k], bl_hw[k], stretch_tmp[:h])
                if bl_need_v[k]:
                    _vertical_rows(stretch_tmp, 0, 1, 0, crop_size, bl_vs[k], bl_vc[k], bl_vw[k], acc, stretched)
                else:
                    stretched[:, :] = stretch_tmp
            else:  # width is crop_size: the vertical pass reads the image rows directly
                _vertical_rows(image, row0, step, x0, crop_size, bl_vs[k], bl_vc[k], bl_vw[k], acc, stretched)
            src = stretched
            sy0 = 0
            sstep = 1
            sx0 = 0
        _horizontal(src, sy0, sstep, crop_size, sx0, lz_hs, lz_hc, lz_hw, narrow)
        for r in range(crop_size):
            for c in range(n_cols):
                narrow_t[c, r] = narrow[r, c]
        _vertical_t(narrow_t, lz_vs, lz_vc, lz_vw, small)
        out[b] = _bits(small)


@numba.njit(cache=True, parallel=True)
def _hash_boxes(
    image, boxes, table_of_box,
    bl_hs, bl_hc, bl_hw, bl_vs, bl_vc, bl_vw, bl_need_h, bl_need_v,
    lz_hs, lz_hc, lz_hw, lz_vs, lz_vc, lz_vw,
    crop_size, n_chunks, out,
):
    """Hash every box, the boxes split into chunks run by the available threads (each with its own buffers)."""
    n = boxes.shape[0]
    for c in prange(n_chunks):
        _hash_box_range(
            n * c // n_chunks, n * (c + 1) // n_chunks, image, boxes, table_of_box,
            bl_hs, bl_hc, bl_hw, bl_vs, bl_vc, bl_vw, bl_need_h, bl_need_v,
            lz_hs, lz_hc, lz_hw, lz_vs, lz_vc, lz_vw, crop_size, out,
        )


def _pad_tables(tables: list[tuple[np.ndarray, np.ndarray, np.ndarray]], n_out: int):
    """Stack per-size weight tables into padded 2D/3D arrays that numba can index by table number."""
    k = max(1, len(tables))
    width = max([t[2].shape[1] for t in tables] + [1])
    starts = np.zeros((k, n_out), dtype=np.int64)
    counts = np.zeros((k, n_out), dtype=np.int64)
    weights = np.zeros((k, n_out, width), dtype=np.int32)
    for i, (s, c, w) in enumerate(tables):
        starts[i], counts[i], weights[i, :, : w.shape[1]] = s, c, w
    return starts, counts, weights


def _check_sizes(crop_size: int, hash_size: int) -> None:
    if not 2 <= hash_size <= 8:
        raise ValueError(f"hash_size must be 2..8 (a hash is stored as 64 bits), got {hash_size}")
    if crop_size < hash_size + 1:
        raise ValueError(f"crop_size {crop_size} is smaller than hash_size + 1")


def dhash_boxes(
    image: np.ndarray,
    boxes: np.ndarray | Sequence[Sequence[int]],
    crop_size: int = DEFAULT_CROP_SIZE,
    hash_size: int = DEFAULT_HASH_SIZE,
) -> np.ndarray:
    """dHash of every box ``(y0, y1, x0, x1)`` cut from a 2D uint8 image, without copying the patches.

    Boxes must be at most crop_size on each side (the tiling never makes larger ones). Returns uint64 hashes.
    """
    boxes = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
    heights = boxes[:, 1] - boxes[:, 0]
    if (heights <= 0).any():
        raise ValueError("boxes must not be empty")
    strided = np.stack([boxes[:, 0], np.ones(len(boxes), np.int64), heights, boxes[:, 2], boxes[:, 3]], axis=1)
    return dhash_strided_boxes(image, strided, crop_size, hash_size)


def dhash_strided_boxes(
    image: np.ndarray, boxes: np.ndarray, crop_size: int = DEFAULT_CROP_SIZE, hash_size: int = DEFAULT_HASH_SIZE
) -> np.ndarray:
    """dHash of boxes given as (first row, row step, rows, x0, x1) of a 2D uint8 image.

    With a flattened (n * height, width) stack of slices, a row step of ``height`` picks the same row of
    consecutive slices: a cross section through the stack, hashed without being copied out.
    """
    _check_sizes(crop_size, hash_size)
    image = np.ascontiguousarray(image)
    if image.dtype != np.uint8 or image.ndim != 2:
        raise ValueError(f"expected a 2D uint8 image, got {image.dtype} {image.shape}")
    boxes = np.asarray(boxes, dtype=np.int64).reshape(-1, 5)
    out = np.zeros(len(boxes), dtype=np.uint64)
    if len(boxes) == 0:
        return out
    heights = boxes[:, 2]
    widths = boxes[:, 4] - boxes[:, 3]
    last_rows = boxes[:, 0] + (heights - 1) * boxes[:, 1]
    if (heights <= 0).any() or (widths <= 0).any() or (heights > crop_size).any() or (widths > crop_size).any():
        raise ValueError(f"boxes must be non-empty and at most {crop_size} on each side")
    if (boxes[:, 0] < 0).any() or (boxes[:, 1] < 1).any() or (boxes[:, 3] < 0).any() or (
        last_rows >= image.shape[0]).any() or (boxes[:, 4] > image.shape[1]).any():
        raise ValueError(f"boxes reach outside the {image.shape} image")

    table_of_box = np.full(len(boxes), -1, dtype=np.int64)
    shapes: dict[tuple[int, int], int] = {}
    for i, (h, w) in enumerate(zip(heights.tolist(), widths.tolist())):
        if (h, w) != (crop_size, crop_size):
            table_of_box[i] = shapes.setdefault((h, w), len(shapes))
    h_tables = [resample_weights(w, crop_size, "bilinear") for (_, w) in shapes]
    v_tables = [resample_weights(h, crop_size, "bilinear") for (h, _) in shapes]
    bl_hs, bl_hc, bl_hw = _pad_tables(h_tables, crop_size)
    bl_vs, bl_vc, bl_vw = _pad_tables(v_tables, crop_size)
    need_h = np.array([w != crop_size for (_, w) in shapes] or [False])
    need_v = np.array([h != crop_size for (h, _) in shapes] or [False])
    lz_hs, lz_hc, lz_hw = resample_weights(crop_size, hash_size + 1, "lanczos")
    lz_vs, lz_vc, lz_vw = resample_weights(crop_size, hash_size, "lanczos")
    _hash_boxes(
        image, boxes, table_of_box,
        bl_hs, bl_hc, bl_hw, bl_vs, bl_vc, bl_vw, need_h, need_v,
        lz_hs, lz_hc, lz_hw, lz_vs, lz_vc, lz_vw,
        crop_size, max(1, min(len(boxes) // 4, 4 * numba.get_num_threads())), out,
    )
    return out


def dhash_batch(
    patches: Sequence[np.ndarray] | np.ndarray,
    crop_size: int = DEFAULT_CROP_SIZE,
    hash_size: int = DEFAULT_HASH_SIZE,
) -> np.ndarray:
    """dHash of each 2D uint8 patch (a list of any sizes up to crop_size, or a (B, h, w) array)."""
    if isinstance(patches, np.ndarray) and patches.ndim == 3:
        b, h, w = patches.shape
        flat = np.ascontiguousarray(patches).reshape(b * h, w)
        boxes = np.stack([np.arange(b) * h, np.arange(1, b + 1) * h, np.zeros(b, int), np.full(b, w)], axis=1)
        return dhash_boxes(flat, boxes, crop_size, hash_size)
    out = np.zeros(len(patches), dtype=np.uint64)
    for i, patch in enumerate(patches):
        out[i] = dhash_boxes(np.asarray(patch), [(0, patch.shape[0], 0, patch.shape[1])], crop_size, hash_size)[0]
    return out


def dhash(patch: np.ndarray, crop_size: int = DEFAULT_CROP_SIZE, hash_size: int = DEFAULT_HASH_SIZE) -> int:
    """dHash of one 2D uint8 patch as an int; equals the original's imagehash value bit for bit.

    Patches larger than crop_size are resized down first, as Pillow would (handled by Pillow itself here).
    """
    patch = np.asarray(patch)
    if patch.dtype != np.uint8 or patch.ndim != 2:
        raise ValueError(f"expected a 2D uint8 patch, got {patch.dtype} {patch.shape}")
    if patch.shape[0] > crop_size or patch.shape[1] > crop_size:
        return dhash_reference(patch, crop_size, hash_size)
    return int(dhash_boxes(patch, [(0, patch.shape[0], 0, patch.shape[1])], crop_size, hash_size)[0])


def dhash_reference(patch: np.ndarray, crop_size: int = DEFAULT_CROP_SIZE, hash_size: int = DEFAULT_HASH_SIZE) -> int:
    """The original's hash, through Pillow and imagehash (slow; the oracle for tests and benchmarks)."""
    import imagehash
    from PIL import Image

    resized = Image.fromarray(np.ascontiguousarray(patch)).resize((crop_size, crop_size), Image.BILINEAR)
    return int(str(imagehash.dhash(resized, hash_size)), 16)


def hamming(a: int, b: int) -> int:
    return int(a ^ b).bit_count()
