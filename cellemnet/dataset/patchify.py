"""Cut patches from 2D image groups and 3D volumes, hash them, drop near duplicates, store the exemplars.

One source (a volume, or a folder of 2D images from one imaging project) becomes one shard in the output
folder. Every source is processed in two passes so memory stays bounded:

1. hash pass: stream the data (a volume in bands of at most crop_size slices, images one by one), compute the
   dHash of every tile in place, keep only (location, hash);
2. greedy de-duplication of all hashes of the source (seeded walk order);
3. cut pass: re-read only what holds exemplars and cut those patches; write the shard (atomic) with a manifest
   of every tile cut, kept or duplicate.

Re-running skips sources whose shard is complete; leftovers of killed runs are removed, so a killed and re-run
command gives the same shards as one clean run.
"""
from __future__ import annotations

import concurrent.futures as cf
import errno
import json
import multiprocessing
import os
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from cellemnet.constants import DEFAULT_CROP_SIZE, DEFAULT_HASH_SIZE, DEFAULT_MAX_HAMMING
from cellemnet.dataset import store
from cellemnet.dataset.dedup import greedy_clusters, walk_order
from cellemnet.dataset.hashing import dhash_boxes, dhash_strided_boxes
from cellemnet.dataset.names import format_name, source_name
from cellemnet.dataset.tiling import grid_boxes, grid_edges, usable_axes
from cellemnet.errors import ConfigError, InputError
from cellemnet.io import (
    IMAGE_SUFFIXES,
    atomic_path,
    check_writable,
    intensity_limits,
    is_image_file,
    is_volume_file,
    open_volume,
    read_image,
    split_container_path,
    to_uint8,
)
from cellemnet.safepath import is_within
from cellemnet.workers import die_with_parent

_SLICES_PER_READ = 16  # slices read (and converted to uint8) at once from a volume
_BAND_BUDGET = 160 << 20  # bytes of uint8 cross-section data held at once (a z band, or a block of it)
KIND_VOLUME = "volume"
KIND_IMAGES = "images"


@dataclass(frozen=True)
class PatchSettings:
    """What is cut and how duplicates are judged; stored in every shard's metadata."""

    crop_size: int = DEFAULT_CROP_SIZE
    hash_size: int = DEFAULT_HASH_SIZE
    max_distance: int = DEFAULT_MAX_HAMMING
    seed: int = 0
    axes: tuple[int, ...] = (0, 1, 2)
    slice_step: int = 1

    def __post_init__(self) -> None:
        if self.crop_size < 16:
            raise ConfigError(f"crop size must be at least 16, got {self.crop_size}")
        if not 2 <= self.hash_size <= 8:
            raise ConfigError(f"hash size must be 2..8 (hashes are stored as 64 bits), got {self.hash_size}")
        if self.max_distance < 0:
            raise ConfigError(f"max Hamming distance must be >= 0, got {self.max_distance}")
        if self.slice_step < 1:
            raise ConfigError(f"slice spacing must be >= 1, got {self.slice_step}")
        if not self.axes or any(a not in (0, 1, 2) for a in self.axes):
            raise ConfigError(f"axes must be a non-empty list of 0, 1, 2, got {list(self.axes)}")

    def metadata(self, kind: str) -> dict:
        meta = {k: v for k, v in asdict(self).items() if kind == KIND_VOLUME or k not in ("axes", "slice_step")}
        if "axes" in meta:
            meta["axes"] = sorted(set(meta["axes"]))
        return meta


@dataclass
class Source:
    """One unit of work: a volume, or a group of 2D images that share a shard."""

    kind: str
    name: str
    path: str  # volume path/address, or the group's folder
    files: tuple[str, ...] = ()  # 2D images of a group


@dataclass
class SourceResult:
    source: str
    shard: str
    status: str  # "done", "skipped", "failed"
    n_cut: int = 0
    n_kept: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)  # one line each, naming the file
    notes: list[str] = field(default_factory=list)


@dataclass
class _Tiles:
    """Where every tile of a source was cut and its hash (no pixels)."""

    item: np.ndarray  # image index (2D) or axis (3D)
    slice: np.ndarray  # slice index (3D), -1 for 2D
    boxes: np.ndarray  # (n, 4) y0, y1, x0, x1 in the image / cross section
    hashes: np.ndarray

    @classmethod
    def concat(cls, parts: list["_Tiles"]) -> "_Tiles":
        if not parts:
            return cls(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 4), np.int64), np.zeros(0, np.uint64))
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("item", "slice", "boxes", "hashes")))

    def sorted(self) -> "_Tiles":
        """Storage order: image by image (2D); per axis, xy slice by slice, and xz/yz cross sections band by band
        (a band is one row of tiles, z range y0..y1), so the cut pass reads each slice or band once."""
        band = np.where((self.slice >= 0) & (self.item > 0), self.boxes[:, 0], 0)
        order = np.lexsort((self.boxes[:, 2], self.boxes[:, 0], self.slice, band, self.item))
        return _Tiles(self.item[order], self.slice[order], self.boxes[order], self.hashes[order])

    def __len__(self) -> int:
        return len(self.hashes)


# --------------------------------------------------------------------------------------------------------------
# Finding sources
# --------------------------------------------------------------------------------------------------------------
def _file_or_link(p: Path) -> bool:
    """A file, or a symbolic link that should point to one: a broken link is named as left out, not skipped."""
    return p.is_file() or (p.is_symlink() and not p.exists())


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def volume_source_name(path: str | os.PathLike) -> str:
    """Source name of a volume: the file stem, plus the dataset key for ``file.h5:/key`` / ``store.zarr/key``."""
    file, key, _ = split_container_path(path)
    name = source_name(file.name)
    if key:
        name += "_" + key.strip("/").replace("/", "_")
    return name


def _output_below(root: Path, exclude: str | os.PathLike | None) -> Path | None:
    """The output folder when it lies inside the input folder `root` (entries under it are left out); None when
    there is none or it is `root` itself (then only the shards beside the inputs are left out, by their format)."""
    if exclude is None or Path(exclude).resolve() == root.resolve():
        return None
    return Path(exclude)


def find_volumes(voldir: str | os.PathLike, exclude: str | os.PathLike | None = None) -> list[Source]:
    """Volumes in a folder (sorted), or the single volume/address given. Zarr stores count as one volume.

    Entries inside `exclude` (the output folder) are left out: outputs are never inputs (a shard `v.h5` written
    into the volume folder would otherwise be read back as a volume on the next run), and so are patch shards
    and their temporaries wherever they lie."""
    voldir_text = os.fspath(voldir)
    file, key, kind = split_container_path(voldir_text)
    path = Path(voldir_text)
    if kind is not None and (key is not None or file.is_file() or kind == "zarr"):
        return [Source(KIND_VOLUME, volume_source_name(voldir_text), voldir_text)]
    if path.is_file():
        return [Source(KIND_VOLUME, volume_source_name(path), str(path))]
    if not path.is_dir():
        raise InputError(f"{path}: no such folder or volume")
    sources = []
    out = _output_below(path, exclude)
    for entry in sorted(path.iterdir()):
        if not _visible(entry):
            continue
        if entry.is_dir() and not entry.name.lower().endswith(".zarr"):
            continue
        if (out is not None and is_within(entry, out, or_equal=True)) or store.is_patch_shard(entry):
            continue
        if is_volume_file(entry) or is_image_file(entry):
            sources.append(Source(KIND_VOLUME, volume_source_name(entry), str(entry)))
    return sources


def find_image_groups(imdir: str | os.PathLike, exclude: str | os.PathLike | None = None) -> list[Source]:
    """One group per subfolder of ``imdir`` (its images, sorted); images directly in ``imdir`` form a group
    named after ``imdir``. Outputs are never inputs: the subfolder `exclude` (the output folder) and any
    subfolder holding this project's patch shards and no images are left out."""
    root = Path(imdir)
    if not root.is_dir():
        raise InputError(f"{root}: no such folder")
    groups = []
    loose = tuple(str(p) for p in sorted(root.iterdir()) if _visible(p) and _file_or_link(p) and is_image_file(p))
    if loose:
        groups.append(Source(KIND_IMAGES, source_name(root.resolve().name), str(root), loose))
    out = _output_below(root, exclude)
    for sub in sorted(p for p in root.iterdir() if _visible(p) and p.is_dir()):
        if out is not None and is_within(sub, out, or_equal=True):
            continue
        files = tuple(str(p) for p in sorted(sub.iterdir()) if _visible(p) and _file_or_link(p) and is_image_file(p))
        if not files and any(store.is_patch_shard(p) for p in sub.iterdir()):
            continue  # an output folder of an earlier run
        groups.append(Source(KIND_IMAGES, sub.name, str(sub), files))
    return groups


# --------------------------------------------------------------------------------------------------------------
# 3D volumes
# --------------------------------------------------------------------------------------------------------------
def _read_uint8(reader, lo: int, hi: int, limits, ys: slice = slice(None), xs: slice = slice(None)) -> np.ndarray:
    """reader[lo:hi, ys, xs] as uint8, converting a few slices at a time (bounded extra memory)."""
    if reader.dtype == np.uint8:
        return np.asarray(reader[lo:hi, ys, xs])
    parts = [to_uint8(reader[start : min(start + _SLICES_PER_READ, hi), ys, xs], limits, name=reader.path)
             for start in range(lo, hi, _SLICES_PER_READ)]
    return np.concatenate(parts) if len(parts) > 1 else parts[0]


def _cross_block(h: int, height: int, width: int, axis: int) -> int:
    """Cross sections read together: the whole band when it fits the memory budget, else a block of y rows
    (axis 1) or x columns (axis 2) of about that size, so a wide lazy volume never loads a whole band."""
    n_sections = height if axis == 1 else width
    if h * height * width <= _BAND_BUDGET:
        return n_sections
    per_section = h * (width if axis == 1 else height)
    return max(1, min(n_sections, _BAND_BUDGET // per_section))


def _read_cross_block(reader, lo: int, hi: int, axis: int, a: int, b: int, limits) -> np.ndarray:
    if axis == 1:
        return _read_uint8(reader, lo, hi, limits, ys=slice(a, b))
    return _read_uint8(reader, lo, hi, limits, xs=slice(a, b))


def _volume_bands(depth: int, crop_size: int, cross: bool, xy: bool) -> list[tuple[int, int, bool]]:
    """z ranges read at once: the tile rows of the xz/yz cross sections (when cut), then the rest for xy only."""
    bands = [(lo, hi, True) for lo, hi in grid_edges(depth, crop_size)] if cross else []
    start = bands[-1][1] if bands else 0
    if xy:
        bands += [(lo, min(lo + _SLICES_PER_READ, depth), False) for lo in range(start, depth, _SLICES_PER_READ)]
    return bands


def _sections_image(slab: np.ndarray, axis: int) -> tuple[np.ndarray, int]:
    """A flat 2D view of a z band from which every cross section perpendicular to ``axis`` can be read with a
    row step, and that step. axis 0/1: the band itself, (z * y, x); axis 2: the band with each slice transposed,
    (z * x, y), made with OpenCV's blocked transpose (a strided gather in numpy is ~2x slower)."""
    h, height, width = slab.shape
    if axis in (0, 1):
        return np.ascontiguousarray(slab).reshape(h * height, width), height
    import cv2

    out = np.empty((h, width, height), dtype=np.uint8)
    for z in range(h):
        out[z] = cv2.transpose(slab[z])
    return out.reshape(h * width, height), width


def _hash_xy(part: np.ndarray, first_z: int, chosen: np.ndarray, boxes0: np.ndarray, s: PatchSettings) -> _Tiles:
    """Tiles of the chosen xy slices held in ``part`` (slices first_z.. of the volume)."""
    image, height = _sections_image(part, 0)
    first = ((chosen - first_z) * height)[:, None] + boxes0[None, :, 0]
    strided = np.stack(np.broadcast_arrays(
        first, 1, (boxes0[:, 1] - boxes0[:, 0])[None, :], boxes0[None, :, 2], boxes0[None, :, 3]), axis=-1)
    hashes = dhash_strided_boxes(image, strided.reshape(-1, 5), s.crop_size, s.hash_size)
    return _Tiles(np.zeros(len(hashes), np.int64), np.repeat(chosen, len(boxes0)), np.tile(boxes0, (len(chosen), 1)),
                  hashes)


def _hash_cross(block: np.ndarray, axis: int, a: int, lo: int, hi: int, s: PatchSettings) -> _Tiles | None:
    """Tiles of the cross sections a.. (every slice_step-th) held in a (z band, rows, cols) block."""
    image, step = _sections_image(block, axis)
    indices = np.arange(a, a + step)
    chosen = indices[indices % s.slice_step == 0]
    if not len(chosen):
        return None
    cols = np.array(grid_edges(image.shape[1], s.crop_size), dtype=np.int64)
    strided = np.stack(np.broadcast_arrays(
        (chosen - a)[:, None], step, hi - lo, cols[None, :, 0], cols[None, :, 1]), axis=-1).reshape(-1, 5)
    hashes = dhash_strided_boxes(image, strided, s.crop_size, s.hash_size)
    boxes = np.stack([np.full(len(cols), lo), np.full(len(cols), hi), cols[:, 0], cols[:, 1]], axis=1)
    return _Tiles(np.full(len(hashes), axis), np.repeat(chosen, len(cols)), np.tile(boxes, (len(chosen), 1)), hashes)


def _hash_volume(reader, axes: list[int], s: PatchSettings, limits, progress: Callable[[int], None],
                 z_range: tuple[int, int] | None = None) -> _Tiles:
    """Every tile's location and hash. With ``z_range`` (start, stop): only the xy slices start..stop-1 and the
    xz/yz bands that start in that range, so the parts of a split volume hash every tile exactly once."""
    depth, height, width = reader.shape
    z_lo, z_hi = z_range if z_range is not None else (0, depth)
    cs = s.crop_size
    cross = [a for a in axes if a in (1, 2)]
    parts: list[_Tiles] = []
    boxes0 = grid_boxes(height, width, cs)
    for lo, hi, with_cross in _volume_bands(depth, cs, bool(cross), 0 in axes):
        with_cross = with_cross and z_lo <= lo < z_hi  # a band belongs to the part its first slice is in
        xy_lo, xy_hi = max(lo, z_lo), min(hi, z_hi)
        if not with_cross and xy_lo >= xy_hi:
            continue
        read_lo, read_hi = (lo, hi) if with_cross else (xy_lo, xy_hi)
        h = read_hi - read_lo
        band_fits = h * height * width <= _BAND_BUDGET
        slab = _read_uint8(reader, read_lo, read_hi, limits) if band_fits else None
        if 0 in axes and xy_lo < xy_hi:
            step = xy_hi - xy_lo if band_fits else _SLICES_PER_READ
            for z0 in range(xy_lo, xy_hi, step):
                z1 = min(xy_hi, z0 + step)
                z = np.arange(z0, z1)
                chosen = z[z % s.slice_step == 0]
                if len(chosen):
                    part = slab[z0 - read_lo : z1 - read_lo] if band_fits else _read_uint8(reader, z0, z1, limits)
                    parts.append(_hash_xy(part, z0, chosen, boxes0, s))
        if with_cross:
            for axis in cross:
                n_sections = height if axis == 1 else width
                size = _cross_block(h, height, width, axis)
                for a in range(0, n_sections, size):
                    b = min(a + size, n_sections)
                    if band_fits:
                        block = slab[:, a:b, :] if axis == 1 else slab[:, :, a:b]
                    else:
                        block = _read_cross_block(reader, lo, hi, axis, a, b, limits)
                    tiles = _hash_cross(block, axis, a, lo, hi, s)
                    if tiles is not None:
                        parts.append(tiles)
                    del block
        del slab
        progress(max(0, xy_hi - xy_lo))
    return _Tiles.concat(parts)


def _cut_volume(reader, tiles: _Tiles, keep: np.ndarray, limits) -> Iterator[np.ndarray]:
    """Yield the kept tiles (indices in storage order), reading each xy slice, or block of cross sections of a
    z band, that holds some once."""
    depth, height, width = reader.shape
    loaded_key, data = None, None
    for i in keep.tolist():
        axis, index = int(tiles.item[i]), int(tiles.slice[i])
        y0, y1, x0, x1 = (int(v) for v in tiles.boxes[i])
        if axis == 0:
            key, a = (0, index), 0
        else:
            size = _cross_block(y1 - y0, height, width, axis)
            a = index // size * size
            key = (axis, y0, y1, a)
        if key != loaded_key:
            data = None  # free the previous slice/block before reading the next
            if axis == 0:
                data = _read_uint8(reader, index, index + 1, limits)[0]
            else:
                n_sections = height if axis == 1 else width
                data = _read_cross_block(reader, y0, min(y1, depth), axis, a, min(a + size, n_sections), limits)
            loaded_key = key
        if axis == 0:
            yield data[y0:y1, x0:x1].copy()
        else:
            section = data[:, index - a, :] if axis == 1 else data[:, :, index - a]
            yield np.ascontiguousarray(section[:, x0:x1])


def _shapes(tiles: _Tiles, keep: np.ndarray) -> np.ndarray:
    boxes = tiles.boxes[keep]
    return np.stack([boxes[:, 1] - boxes[:, 0], boxes[:, 3] - boxes[:, 2]], axis=1).astype(np.int32)


def _volume_plan(reader, source: Source, s: PatchSettings) -> tuple[list[int], dict[int, str], tuple[float, float]]:
    """The axes cut, the axes skipped (and why) and the intensity limits of a volume: what every job of a volume,
    whole or split, must agree on."""
    axes, skipped = usable_axes(reader.shape, reader.spacing, source.name, s.axes, s.crop_size)
    if reader.path.lower().endswith((".mp4", ".avi")) and any(a != 0 for a in axes):
        skipped.update({a: "video: cut on xy only" for a in axes if a != 0})
        axes = [a for a in axes if a == 0]
    if not axes:
        raise InputError(f"{source.path}: nothing to cut from a {reader.shape} volume ({'; '.join(skipped.values())})")
    limits = intensity_limits(reader) if reader.dtype != np.uint8 else (0.0, 255.0)
    return axes, skipped, limits


def _volume_metadata(reader, source: Source, s: PatchSettings, axes, skipped, limits) -> dict:
    return {
        "kind": KIND_VOLUME,
        "source": source.path,
        "shape": list(reader.shape),
        "spacing": list(reader.spacing),
        "dtype": str(reader.dtype),
        "intensity_limits": [float(limits[0]), float(limits[1])],
        "cut_axes": axes,
        "skipped_axes": {str(a): why for a, why in skipped.items()},
        **s.metadata(KIND_VOLUME),
    }


def _tile_names(source: Source, tiles: _Tiles, indices: Iterable[int]) -> list[str]:
    return [format_name(source.name, *map(int, tiles.boxes[i]), axis=int(tiles.item[i]),
                        slice_index=int(tiles.slice[i])) for i in indices]


def _deduplicated(source: Source, tiles: _Tiles, s: PatchSettings):
    """The greedy de-duplication of a volume's tiles (in storage order): (clusters, kept indices sorted)."""
    dedup = greedy_clusters(tiles.hashes, s.max_distance, order=walk_order(len(tiles), s.seed))
    return dedup, np.sort(dedup.exemplars)


def _write_volume_shard(reader, source: Source, shard: Path, s: PatchSettings, tiles: _Tiles, metadata: dict,
                        limits) -> int:
    """De-duplicate a volume's tiles (in storage order) and write the shard; returns the number kept."""
    tiles = tiles.sorted()
    dedup, keep = _deduplicated(source, tiles, s)
    names = _tile_names(source, tiles, range(len(tiles)))
    _write(shard, names, [source.path] * len(tiles), tiles, dedup.exemplar_of, keep,
           _cut_volume(reader, tiles, keep, limits), metadata)
    return len(keep)


def patchify_volume(source: Source, shard: Path, s: PatchSettings, progress: bool = False) -> SourceResult:
    started = time.perf_counter()
    result = SourceResult(source.path, str(shard), "done")
    with open_volume(source.path) as reader:
        axes, skipped, limits = _volume_plan(reader, source, s)
        result.notes += [f"axis {a} skipped: {why}" for a, why in sorted(skipped.items())]
        bar = _bar(reader.shape[0], f"hash {source.name}", progress, unit="slice")
        tiles = _hash_volume(reader, axes, s, limits, bar.update)
        bar.close()
        metadata = _volume_metadata(reader, source, s, axes, skipped, limits)
        result.n_kept = _write_volume_shard(reader, source, shard, s, tiles, metadata, limits)
    result.n_cut = len(tiles)
    result.seconds = time.perf_counter() - started
    return result


# --------------------------------------------------------------------------------------------------------------
# A volume too big for one job: hash z ranges as separate jobs, then de-duplicate and cut in one merge job
# --------------------------------------------------------------------------------------------------------------
# The within-volume de-duplication must see every hash of the volume in the single job's order, so the parts only
# hash (cheap to keep: location + 8 bytes per tile) and the merge walks their union exactly as one job would.
PART_SUFFIX = ".tiles"
CUT_SUFFIX = ".patches"  # shard format, but not a shard of the corpus (dedupe and classify list *.h5 only)
PART_FORMAT = "cellemnet-tile-hashes"


def z_ranges(depth: int, crop_size: int, parts: int) -> list[tuple[int, int]]:
    """`parts` contiguous z ranges covering 0..depth, cut at multiples of crop_size (the xz/yz band edges) so
    each part reads its own bands; fewer ranges when the volume has fewer bands than parts."""
    if parts < 1:
        raise ConfigError(f"a volume must be split into at least 1 part, got {parts}")
    n_bands = max(1, -(-depth // crop_size))
    k = min(parts, n_bands)
    cuts = [round(i * n_bands / k) * crop_size for i in range(k)] + [depth]
    return [(int(a), int(min(b, depth))) for a, b in zip(cuts[:-1], cuts[1:])]


def parse_z_range(text: str) -> tuple[int, int]:
    """'START:STOP' -> (start, stop), half-open slice indices."""
    start, sep, stop = str(text).partition(":")
    try:
        if not sep:
            raise ValueError
        z = (int(start), int(stop))
    except ValueError:
        raise ConfigError(f"--z-range must be START:STOP (two integers), got {text!r}") from None
    if not 0 <= z[0] < z[1]:
        raise ConfigError(f"--z-range {text}: need 0 <= START < STOP")
    return z


def part_file(out_dir: str | os.PathLike, source_name: str, z_range: tuple[int, int]) -> Path:
    """Where the tile hashes of one z range of a volume are written: OUTDIR/{volume}.z{start}-{stop}.tiles."""
    return Path(out_dir) / f"{source_name}.z{z_range[0]}-{z_range[1]}{PART_SUFFIX}"


def hash_volume_part(source: Source, out_dir: str | os.PathLike, s: PatchSettings, z_range: tuple[int, int],
                     progress: bool = False) -> Path:
    """Hash the tiles of one z range of a volume into its part file (atomic); returns the path."""
    import h5py

    with open_volume(source.path) as reader:
        depth = reader.shape[0]
        if z_range[1] > depth:
            raise ConfigError(f"--z-range {z_range[0]}:{z_range[1]}: {source.path} has only {depth} slices")
        axes, skipped, limits = _volume_plan(reader, source, s)
        bar = _bar(z_range[1] - z_range[0], f"hash {source.name} z {z_range[0]}:{z_range[1]}", progress, unit="slice")
        tiles = _hash_volume(reader, axes, s, limits, bar.update, z_range=z_range)
        bar.close()
        metadata = {"z_range": list(z_range), "shard_metadata": _volume_metadata(reader, source, s, axes, skipped,
                                                                                 limits)}
    path = part_file(check_writable(out_dir, "tile hashes"), source.name, z_range)
    with atomic_path(path, suffix=PART_SUFFIX) as tmp, h5py.File(tmp, "w") as f:
        for key in ("item", "slice", "boxes", "hashes"):
            f.create_dataset(key, data=getattr(tiles, key), track_times=False)
        f.attrs["format"] = PART_FORMAT
        f.attrs["metadata"] = json.dumps(metadata, sort_keys=True)
    return path


def _read_part(path: Path) -> tuple[dict, _Tiles]:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") != PART_FORMAT:
                raise InputError(f"{path}: not a tile-hash part (written by patchify3d.py --z-range)")
            metadata = json.loads(f.attrs["metadata"])
            tiles = _Tiles(*(np.asarray(f[key]) for key in ("item", "slice", "boxes", "hashes")))
    except (OSError, KeyError, ValueError) as exc:
        raise InputError(f"{path}: unreadable tile-hash part ({' '.join(str(exc).split())})") from None
    return metadata, tiles


def _merged_tiles(reader, source: Source, parts: Sequence[str | os.PathLike], s: PatchSettings):
    """The union of a volume's tile-hash parts, checked (same volume and settings, the ranges covering the volume
    once): (shard metadata, skipped axes, intensity limits, tiles in storage order)."""
    read = sorted(((Path(p),) + _read_part(Path(p)) for p in parts), key=lambda r: r[1]["z_range"])
    if not read:
        raise ConfigError(f"{source.path}: no tile-hash parts to merge")
    axes, skipped, limits = _volume_plan(reader, source, s)
    metadata = _volume_metadata(reader, source, s, axes, skipped, limits)
    expected_stop = 0
    for path, meta, _ in read:
        if meta["shard_metadata"] != metadata:
            raise InputError(f"{path}: made from another volume or with other settings than {source.path}")
        start, stop = meta["z_range"]
        if start != expected_stop:
            raise InputError(f"{path}: z ranges do not follow each other (slices {expected_stop}:{start} "
                             f"are missing or doubled)")
        expected_stop = stop
    if expected_stop != reader.shape[0]:
        raise InputError(f"{source.path}: the parts end at slice {expected_stop}, the volume has {reader.shape[0]}")
    return metadata, skipped, limits, _Tiles.concat([t for _, _, t in read]).sorted()


def _in_z_range(tiles: _Tiles, z_range: tuple[int, int]) -> np.ndarray:
    """Which tiles a z range cuts: xy tiles of its slices, xz/yz tiles of the bands that start in it (the rule
    of the hash pass, so the ranges' cuts never overlap and together hold every tile)."""
    z = np.where(tiles.item == 0, tiles.slice, tiles.boxes[:, 0])
    return (z >= z_range[0]) & (z < z_range[1])


def _patches_from_cuts(cuts: Sequence[str | os.PathLike], names: list[str], keep: np.ndarray,
                       where: str) -> Iterator[np.ndarray]:
    """The kept patches, in shard order, from the files the cut jobs wrote (each kept patch in exactly one)."""
    readers = [store.ShardReader(c) for c in cuts]
    try:
        found: dict[str, tuple[int, int]] = {}
        for k, reader in enumerate(readers):
            for i, name in enumerate(reader.names):
                if name in found:
                    raise InputError(f"{cuts[k]}: patch {name} is also in {cuts[found[name][0]]} (overlapping ranges)")
                found[name] = (k, i)
        wanted = [names[i] for i in keep.tolist()]
        missing = [n for n in wanted if n not in found]
        if missing or len(found) != len(wanted):
            raise InputError(f"{where}: the cut parts hold {len(found)} patches, the de-duplication kept "
                             f"{len(wanted)}" + (f" (missing {missing[0]})" if missing else "") +
                             "; cut every z range from the same tile-hash parts")
        for name in wanted:
            k, i = found[name]
            yield readers[k].read(i)
    finally:
        for reader in readers:
            reader.close()


def merge_volume_parts(source: Source, parts: Sequence[str | os.PathLike], shard: str | os.PathLike,
                       s: PatchSettings, progress: bool = False,
                       cuts: Sequence[str | os.PathLike] | None = None) -> SourceResult:
    """The shard of a volume from the tile hashes of its z ranges: the same shard as one patchify_volume job
    (same walk, same exemplars, same pixels). The ranges must cover the volume once, made with these settings.
    The patches are cut from the volume here, or taken from the files of `cut_volume_range` jobs (`cuts`)."""
    started = time.perf_counter()
    shard = Path(shard)
    result = SourceResult(source.path, str(shard), "done")
    with open_volume(source.path) as reader:
        metadata, skipped, limits, tiles = _merged_tiles(reader, source, parts, s)
        result.notes += [f"axis {a} skipped: {why}" for a, why in sorted(skipped.items())]
        if cuts is None:
            result.n_kept = _write_volume_shard(reader, source, shard, s, tiles, metadata, limits)
        else:
            dedup, keep = _deduplicated(source, tiles, s)
            names = _tile_names(source, tiles, range(len(tiles)))
            _write(shard, names, [source.path] * len(tiles), tiles, dedup.exemplar_of, keep,
                   _patches_from_cuts(list(cuts), names, keep, str(shard)), metadata)
            result.n_kept = len(keep)
    result.n_cut = len(tiles)
    result.seconds = time.perf_counter() - started
    return result


def cut_file(out_dir: str | os.PathLike, source_name: str, z_range: tuple[int, int]) -> Path:
    """Where one z range's kept patches are written: OUTDIR/{volume}.z{start}-{stop}.patches."""
    return Path(out_dir) / f"{source_name}.z{z_range[0]}-{z_range[1]}{CUT_SUFFIX}"


def cut_volume_range(source: Source, parts: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
                     s: PatchSettings, z_range: tuple[int, int]) -> tuple[Path, int]:
    """Cut the exemplars one z range holds (the de-duplication of all parts, repeated here: it is cheap and
    deterministic) into its cut file (shard format, no manifest). Returns the path and the number cut."""
    with open_volume(source.path) as reader:
        metadata, _, limits, tiles = _merged_tiles(reader, source, parts, s)
        _, keep = _deduplicated(source, tiles, s)
        mine = keep[_in_z_range(tiles, z_range)[keep]]
        path = cut_file(check_writable(out_dir, "cut patches"), source.name, z_range)
        store.write_shard(path, _tile_names(source, tiles, mine.tolist()), _cut_volume(reader, tiles, mine, limits),
                          tiles.hashes[mine], {**metadata, "z_range": list(z_range)}, shapes=_shapes(tiles, mine))
    return path, len(mine)


def run_split_step(volumes: Sequence[Source], out_dir: str | os.PathLike, s: PatchSettings, z_range: str | None,
                   merge: Sequence[str] | None, cuts: Sequence[str] | None = None, progress: bool = True) -> str:
    """patchify3d.py on the one volume given, split into jobs. Returns the line to print.

    --z-range: hash that range into a part; --merge PARTS: de-duplicate the parts and write the volume's shard
    (skipped when it is complete); --merge PARTS --z-range: cut only that range's exemplars into a cut file;
    --merge PARTS --cuts CUTS: write the shard from the cut files instead of reading the volume again."""
    if len(volumes) != 1:
        raise ConfigError(f"--z-range and --merge take one volume, not a folder of {len(volumes)}")
    source = volumes[0]
    if cuts and z_range is not None:
        raise ConfigError("--cuts assembles the shard of the whole volume: give it without --z-range")
    if cuts and not merge:
        raise ConfigError("--cuts needs --merge PART ... (the tile hashes the cuts were made from)")
    if z_range is not None and not merge:
        path = hash_volume_part(source, out_dir, s, parse_z_range(z_range), progress)
        return f"patchify3d: tile hashes of {source.name} z {z_range} in {path}"
    if z_range is not None:
        path, n = cut_volume_range(source, merge, out_dir, s, parse_z_range(z_range))
        return f"patchify3d: {n} kept patches of {source.name} z {z_range} in {path}"
    shard = shard_file(check_writable(out_dir, "patch shards"), source)
    if store.is_complete_shard(shard):
        mismatch = settings_mismatch(shard, s, KIND_VOLUME)
        if mismatch:
            raise ConfigError(f"{shard}: made with other settings: {mismatch}; delete it or choose another output "
                              f"folder")
        return f"patchify3d: {shard} is complete (skipped)"
    result = merge_volume_parts(source, merge, shard, s, progress, cuts=cuts)
    store.rebuild_folder_manifest(shard.parent)
    return (f"patchify3d: {source.name}: {len(merge)} parts merged, {result.n_cut} patches cut, {result.n_kept} kept; "
            f"{shard}; {result.seconds:.1f} s")


def shard_file(out_dir: str | os.PathLike, source: Source) -> Path:
    """The shard a source is written to: OUTDIR/{source name}.h5."""
    return Path(out_dir) / f"{source.name}{store.SHARD_SUFFIX}"


def select_sources(sources: Sequence[Source], names: Sequence[str], where: str | os.PathLike) -> list[Source]:
    """The sources named (in the order found); ConfigError naming one that is not in `where`."""
    by_name = {s.name: s for s in sources}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise ConfigError(f"--only {missing[0]}: no such source in {where} (found: "
                          f"{', '.join(sorted(by_name)) or 'none'})")
    wanted = set(names)
    return [s for s in sources if s.name in wanted]


# --------------------------------------------------------------------------------------------------------------
# 2D image groups
# --------------------------------------------------------------------------------------------------------------
def _read_image_uint8(path: str) -> np.ndarray:
    return to_uint8(read_image(path), name=path)


def patchify_group(source: Source, shard: Path, s: PatchSettings, progress: bool = False) -> SourceResult:
    started = time.perf_counter()
    result = SourceResult(source.path, str(shard), "done")
    if not source.files:
        raise InputError(f"{source.path}: no images found (looked for {', '.join(_image_suffixes())})")
    files: list[str] = []
    stems: dict[str, str] = {}
    parts: list[_Tiles] = []
    bar = _bar(len(source.files), f"hash {source.name}", progress, unit="image")
    for path in source.files:
        bar.update(1)
        stem = source_name(Path(path).name)
        if stem in stems:
            result.errors.append(f"{path}: same name stem '{stem}' as {stems[stem]}; rename one (left out)")
            continue
        try:
            image = _read_image_uint8(path)
        except InputError as exc:
            result.errors.append(f"{exc} (left out)")
            continue
        stems[stem] = path
        boxes = grid_boxes(*image.shape, s.crop_size)
        n = len(boxes)
        parts.append(_Tiles(np.full(n, len(files)), np.full(n, -1), boxes, dhash_boxes(image, boxes, s.crop_size,
                                                                                        s.hash_size)))
        files.append(path)
    bar.close()
    if not files:  # each file's reason on its own line, then the group's
        only = f": {result.errors[0].removesuffix(' (left out)')}" if len(result.errors) == 1 else \
            " (each is named above)"
        result.errors.append(f"{source.path}: none of its {len(source.files)} images could be read{only}")
        result.status = "failed"
        result.seconds = time.perf_counter() - started
        return result
    tiles = _Tiles.concat(parts).sorted()
    dedup = greedy_clusters(tiles.hashes, s.max_distance, order=walk_order(len(tiles), s.seed))
    keep = np.sort(dedup.exemplars)

    def patches() -> Iterator[np.ndarray]:
        current, image = -1, None
        for i in keep.tolist():  # sorted by image, so each image is read once
            if tiles.item[i] != current:
                current = int(tiles.item[i])
                image = _read_image_uint8(files[current])
            y0, y1, x0, x1 = tiles.boxes[i]
            yield image[y0:y1, x0:x1].copy()

    stems_by_index = [source_name(Path(f).name) for f in files]
    names = [format_name(stems_by_index[int(tiles.item[i])], *map(int, tiles.boxes[i])) for i in range(len(tiles))]
    sources = [files[int(k)] for k in tiles.item]
    metadata = {
        "kind": KIND_IMAGES,
        "source": source.path,
        "files": files,
        "left_out": result.errors,
        **s.metadata(KIND_IMAGES),
    }
    _write(shard, names, sources, tiles, dedup.exemplar_of, keep, patches(), metadata)
    result.n_cut, result.n_kept = len(tiles), len(keep)
    result.seconds = time.perf_counter() - started
    return result


def _image_suffixes() -> tuple[str, ...]:
    return IMAGE_SUFFIXES


# --------------------------------------------------------------------------------------------------------------
# Writing, resuming, running many sources
# --------------------------------------------------------------------------------------------------------------
def _write(shard, names, sources, tiles: _Tiles, exemplar_of, keep, patches, metadata) -> None:
    duplicate_of = ["" if exemplar_of[i] == i else names[exemplar_of[i]] for i in range(len(names))]
    manifest = store.ShardManifest(names, sources, tiles.hashes, duplicate_of)
    metadata["n_cut"], metadata["n_kept"] = len(names), int(len(keep))
    store.write_shard(shard, [names[i] for i in keep], patches, tiles.hashes[keep], metadata, manifest=manifest,
                      shapes=_shapes(tiles, keep))


def settings_mismatch(shard: Path, s: PatchSettings, kind: str) -> str | None:
    """Why an existing complete shard was made with other settings (None when they agree)."""
    with store.ShardReader(shard) as reader:
        meta = reader.metadata
    wanted = s.metadata(kind)
    diffs = [f"{k} {meta.get(k)!r} (now {v!r})" for k, v in wanted.items() if meta.get(k) != v]
    return ", ".join(diffs) if diffs else None


def _process(source: Source, out_dir: str, s: PatchSettings, progress: bool) -> SourceResult:
    shard = shard_file(out_dir, source)
    try:
        if source.kind == KIND_VOLUME:
            return patchify_volume(source, shard, s, progress)
        return patchify_group(source, shard, s, progress)
    except InputError as exc:
        return SourceResult(source.path, str(shard), "failed", errors=[str(exc)])
    except MemoryError:
        return SourceResult(source.path, str(shard), "failed", errors=[f"{source.path}: out of memory"])
    except OSError as exc:  # the output refused a write (full disk, quota, read-only): name the shard
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EFBIG) or \
                "No space left" in str(exc) or str(out_dir) in str(exc):
            # h5py's message is a paragraph; its errno text is the reason
            reason = "No space left on device" if "No space left" in str(exc) else exc.strerror or str(exc)
            return SourceResult(source.path, str(shard), "failed", errors=[
                f"{shard}: cannot write the shard ({' '.join(reason.split())}); free space and re-run"])
        detail = " ".join(str(exc).split())
        return SourceResult(source.path, str(shard), "failed", errors=[f"{source.path}: cannot read ({detail})"])
    except Exception:  # noqa: BLE001 - one bad source must not stop the others; keep the trace for bugs
        detail = traceback.format_exc(limit=3).strip().splitlines()[-1]
        return SourceResult(source.path, str(shard), "failed", errors=[f"{source.path}: unexpected error: {detail}"])


def _init_worker(parent_pid: int) -> None:
    import numba

    die_with_parent(parent_pid)
    numba.set_num_threads(1)  # the processes already share the cores


def _bar(total: int, desc: str, enabled: bool, unit: str = "it"):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=False, disable=not enabled, dynamic_ncols=True)


def run_sources(
    sources: Sequence[Source], out_dir: str | os.PathLike, settings: PatchSettings, processes: int = 1,
    progress: bool = True,
) -> list[SourceResult]:
    """Patchify every source into ``out_dir`` (skipping complete shards), then rebuild the folder manifest."""
    out = check_writable(out_dir, "patch shards")
    store.remove_stale_temporaries(out)
    results: list[SourceResult] = []
    todo: list[Source] = []
    seen: dict[str, str] = {}
    for source in sources:
        shard = shard_file(out, source)
        if source.name in seen:
            results.append(SourceResult(source.path, str(shard), "failed", errors=[
                f"{source.path}: same source name '{source.name}' as {seen[source.name]}; rename one"]))
            continue
        seen[source.name] = source.path
        if store.is_complete_shard(shard):
            mismatch = settings_mismatch(shard, settings, source.kind)
            if mismatch:
                results.append(SourceResult(source.path, str(shard), "failed", errors=[
                    f"{shard}: made with other settings: {mismatch}; delete it or choose another output folder"]))
                continue
            with store.ShardReader(shard) as reader:
                meta = reader.metadata
            results.append(SourceResult(source.path, str(shard), "skipped", meta.get("n_cut", 0),
                                        meta.get("n_kept", len(reader)), errors=list(meta.get("left_out", []))))
            continue
        todo.append(source)

    from tqdm import tqdm

    with tqdm(total=len(todo), desc="sources", unit="source", disable=not progress or not todo,
              dynamic_ncols=True) as bar:
        if processes <= 1 or len(todo) <= 1:
            for source in todo:
                results.append(_process(source, str(out), settings, progress))
                bar.update(1)
        else:
            context = multiprocessing.get_context("spawn")  # safe with numba threads and on every platform
            with cf.ProcessPoolExecutor(max_workers=processes, mp_context=context, initializer=_init_worker,
                                        initargs=(os.getpid(),)) as pool:
                futures = [pool.submit(_process, source, str(out), settings, False) for source in todo]
                for future in cf.as_completed(futures):
                    results.append(future.result())
                    bar.update(1)
    order = {s.path: i for i, s in enumerate(sources)}
    results = sorted(results, key=lambda r: order.get(r.source, len(order)))
    try:
        store.rebuild_folder_manifest(out)
    except OSError as exc:  # e.g. the disk filled up: the finished shards are complete, a re-run lists them
        manifest = out / store.MANIFEST_NAME
        results.append(SourceResult(str(manifest), "", "failed", errors=[
            f"{manifest}: cannot write the manifest ({exc.strerror or exc}); the finished shards are kept: free "
            f"space and re-run"]))
    return results


def summarize(results: Iterable[SourceResult], what: str, out_dir: str | os.PathLike,
              seconds: float) -> tuple[str, int]:
    """The end-of-run summary and the exit code (1 when anything failed or was left out)."""
    everything = list(results)
    results = [r for r in everything if r.shard]  # the sources (a failed manifest write has no shard)
    done = [r for r in results if r.status == "done"]
    skipped = [r for r in results if r.status == "skipped"]
    failed = [r for r in results if r.status == "failed"]
    cut = sum(r.n_cut for r in done + skipped)
    kept = sum(r.n_kept for r in done + skipped)
    problems = [line for r in everything for line in r.errors]
    lines = [line for r in results for line in (f"note: {r.source}: {n}" for n in r.notes)]
    lines += [f"error: {line}" for line in problems]
    share = f" ({100.0 * kept / cut:.1f}%)" if cut else ""
    lines.append(
        f"{what}: {len(results)} sources: {len(done)} done, {len(skipped)} skipped (already complete), "
        f"{len(failed)} failed; {cut} patches cut, {kept} kept{share}; shards and {store.MANIFEST_NAME} in "
        f"{out_dir}; {seconds:.1f} s"
    )
    if problems:
        lines.append(f"{what}: {len(problems)} problem(s) above; fix or remove those files and re-run "
                     f"(finished shards are kept)")
    return "\n".join(lines), (1 if problems else 0)
