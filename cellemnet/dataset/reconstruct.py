"""Rebuild subvolumes (flipbooks) around curated 3D patches from their names.

A 3D patch name ``{volume}-LOC-{axis}_{slice}_{y0}-{y1}_{x0}-{x1}`` says where it was cut; the subvolume is the
``nz`` cross sections centred on that slice (same axis, same box), stacked slice-first and saved as
``SAVEDIR/{dataset}/{volume}-LOC-{axis}_{low}-{high}_{y0}-{y1}_{x0}-{x1}.tif`` (dataset = volume name before
``-ROI-``, so every ROI of a dataset shares a folder). Volumes are matched to patches by exact source name (not
by substring); only the boxes needed are read, so lazy volumes (HDF5, Zarr) stay out of memory. An existing
output file is skipped, so an interrupted run resumes.
"""
from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cellemnet.dataset import store
from cellemnet.dataset.names import PatchLocation, dataset_name, format_subvolume_name, is_patch_name, parse_name
from cellemnet.dataset.patchify import find_volumes
from cellemnet.errors import InputError
from cellemnet.io import intensity_limits, open_volume, to_uint8, write_volume
from cellemnet.workers import die_with_parent

_IMAGE_SUFFIXES = (".tif", ".tiff", ".png")


@dataclass
class ReconstructReport:
    written: int = 0
    existing: int = 0
    out_of_bounds: int = 0
    ignored_2d: int = 0
    errors: list[str] = field(default_factory=list)


def collect_patch_names(patch_dir: str | os.PathLike) -> list[str]:
    """Patch names under a folder: from shards (``*.h5``) and from image files named after patches."""
    root = Path(patch_dir)
    if not root.is_dir():
        raise InputError(f"{root}: no such folder")
    names: list[str] = []
    for shard in store.list_shards(root, recursive=True):
        with store.ShardReader(shard) as reader:
            names.extend(reader.names)
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() in _IMAGE_SUFFIXES and is_patch_name(path.name):
            names.append(path.name)
    return names


def subvolume_box(loc: PatchLocation, nz: int, shape) -> tuple[int, int] | None:
    """The slice range [low, high) of ``nz`` slices centred on the patch, or None if it leaves the volume."""
    span = nz // 2
    low, high = loc.slice - span, loc.slice + span + 1
    if low < 0 or high > shape[loc.axis]:
        return None
    return low, high


def read_subvolume(reader, loc: PatchLocation, low: int, high: int) -> np.ndarray:
    """(nz, rows, cols) stack of the patch box on slices low..high of its axis."""
    if loc.axis == 0:
        return np.asarray(reader[low:high, loc.y0 : loc.y1, loc.x0 : loc.x1])
    if loc.axis == 1:  # rows = z, cols = x, slices along y
        return np.asarray(reader[loc.y0 : loc.y1, low:high, loc.x0 : loc.x1]).transpose(1, 0, 2)
    return np.asarray(reader[loc.y0 : loc.y1, loc.x0 : loc.x1, low:high]).transpose(2, 0, 1)  # rows z, cols y


def _stack_spacing(spacing, axis: int) -> tuple[float, float, float]:
    sz, sy, sx = spacing
    return {0: (sz, sy, sx), 1: (sy, sz, sx), 2: (sx, sz, sy)}[axis]


def reconstruct_volume(volume_path: str, locations: list[PatchLocation], save_dir: str, nz: int) -> ReconstructReport:
    """Write the subvolumes of one volume's patches (skipping those already written)."""
    report = ReconstructReport()
    try:
        with open_volume(volume_path) as reader:
            limits = intensity_limits(reader) if reader.dtype != np.uint8 else None
            for loc in locations:
                box = subvolume_box(loc, nz, reader.shape)
                if box is None:
                    report.out_of_bounds += 1
                    continue
                low, high = box
                name = format_subvolume_name(loc.source, loc.axis, low, high, loc.y0, loc.y1, loc.x0, loc.x1)
                out = Path(save_dir) / dataset_name(loc.source) / f"{name}.tif"
                if out.exists():
                    report.existing += 1
                    continue
                stack = read_subvolume(reader, loc, low, high)
                stack = to_uint8(stack, limits, name=volume_path) if limits is not None else stack
                write_volume(out, stack, spacing=_stack_spacing(reader.spacing, loc.axis))
                report.written += 1
    except InputError as exc:
        report.errors.append(str(exc))
    return report


def reconstruct(
    patch_dir: str | os.PathLike,
    volume_dirs: list[str | os.PathLike],
    save_dir: str | os.PathLike,
    nz: int = 5,
    processes: int = 1,
    limit: int | None = None,
    seed: int = 0,
    progress: bool = False,
) -> ReconstructReport:
    """Rebuild the subvolumes of every 3D patch under ``patch_dir`` from the volumes in ``volume_dirs``."""
    from tqdm import tqdm

    if nz < 1:
        raise InputError(f"-nz must be at least 1, got {nz}")
    total = ReconstructReport()
    by_source: dict[str, list[PatchLocation]] = {}
    for name in collect_patch_names(patch_dir):
        loc = parse_name(name)
        if loc.axis is None:
            total.ignored_2d += 1
            continue
        by_source.setdefault(loc.source, []).append(loc)
    if limit is not None:  # at most `limit` patches per dataset, drawn with the seed
        rng = np.random.default_rng(seed)
        by_dataset: dict[str, list[PatchLocation]] = {}
        for source in sorted(by_source):
            by_dataset.setdefault(dataset_name(source), []).extend(by_source[source])
        chosen = {}
        for dataset, locs in sorted(by_dataset.items()):
            picks = rng.choice(len(locs), size=min(limit, len(locs)), replace=False)
            for i in sorted(picks.tolist()):
                chosen.setdefault(locs[i].source, []).append(locs[i])
        by_source = chosen
    volumes = {}
    for folder in volume_dirs:
        for source in find_volumes(folder):
            volumes.setdefault(source.name, source.path)
    jobs = [(volumes[s], locs) for s, locs in sorted(by_source.items()) if s in volumes]
    for s in sorted(set(by_source) - set(volumes)):
        total.errors.append(f"no volume named '{s}' in {', '.join(map(str, volume_dirs))} "
                            f"({len(by_source[s])} patches left out)")
    with tqdm(total=len(jobs), desc="volumes", unit="volume", disable=not progress) as bar:
        if processes <= 1 or len(jobs) <= 1:
            reports = []
            for path, locs in jobs:
                reports.append(reconstruct_volume(path, locs, str(save_dir), nz))
                bar.update(1)
        else:
            context = multiprocessing.get_context("spawn")
            with cf.ProcessPoolExecutor(max_workers=processes, mp_context=context, initializer=die_with_parent,
                                        initargs=(os.getpid(),)) as pool:
                futures = [pool.submit(reconstruct_volume, path, locs, str(save_dir), nz) for path, locs in jobs]
                reports = []
                for future in cf.as_completed(futures):
                    reports.append(future.result())
                    bar.update(1)
    for r in reports:
        total.written += r.written
        total.existing += r.existing
        total.out_of_bounds += r.out_of_bounds
        total.errors += r.errors
    return total
