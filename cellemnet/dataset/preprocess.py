"""Preparation of raw data before patchify: 8-bit grayscale images, video stacks, 8-bit MRC, binned volumes.

Each function handles one file and returns what it wrote (None when nothing needed doing); the scripts in
dataset/preprocess/ walk folders, run them (in parallel processes where it helps) and report bad files by name.
Every write is atomic, and a file already converted is left alone, so re-running is safe.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cellemnet.dataset.names import source_name
from cellemnet.errors import InputError
from cellemnet.io import (
    file_suffix,
    intensity_limits,
    open_volume,
    read_image,
    read_video,
    to_uint8,
    write_image,
    write_volume,
)
from cellemnet.workers import die_with_parent

LOSSLESS_IMAGE_SUFFIXES = (".png", ".tif", ".tiff")


def is_8bit_gray_file(path: str | os.PathLike) -> bool:
    """True when an image file already stores one 8-bit channel (nothing to convert)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.mode == "L"
    except Exception:  # noqa: BLE001 - formats Pillow cannot open are converted by the project's reader
        return False


def cleanup_image(path: str | os.PathLike, out_path: str | os.PathLike | None = None) -> Path | None:
    """Convert one 2D image to 8-bit grayscale (robust percentile rescale for other bit depths).

    In place when ``out_path`` is None (same file and format; skipped when already 8-bit gray).
    """
    path = Path(path)
    if out_path is None and is_8bit_gray_file(path):
        return None
    image = to_uint8(read_image(path), name=str(path))
    target = Path(out_path) if out_path is not None else path
    write_image(target, image)
    return target


def copy_name(path: str | os.PathLike) -> str:
    """File name of a converted copy: the same name for lossless formats, else the stem with .png."""
    path = Path(path)
    return path.name if path.suffix.lower() in LOSSLESS_IMAGE_SUFFIXES else f"{path.stem}.png"


def video_stack_path(video: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> Path:
    """``name.nrrd`` when the name already says 'video', else ``name_video.nrrd`` (patchify3d then cuts xy only)."""
    video = Path(video)
    stem = video.stem if "video" in video.stem.lower() else f"{video.stem}_video"
    return Path(out_dir or video.parent) / f"{stem}.nrrd"


def video_to_stack(video: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> Path | None:
    """Write a video's frames as a (t, y, x) uint8 nrrd stack; None when it exists already."""
    target = video_stack_path(video, out_dir)
    if target.exists():
        return None
    write_volume(target, read_video(video))
    return target


def mrc_to_byte(path: str | os.PathLike, out_path: str | os.PathLike | None = None) -> Path | None:
    """Rewrite an MRC volume as unsigned 8-bit (IMOD's unsigned-byte flag set), keeping the voxel size.

    In place when ``out_path`` is None; an MRC that already reads as uint8 is left alone.
    """
    path = Path(path)
    with open_volume(path) as reader:
        if reader.dtype == np.uint8 and out_path is None:
            return None
        limits = intensity_limits(reader)
        data = to_uint8(reader.read(), limits, name=str(path))
        spacing = reader.spacing
    target = Path(out_path) if out_path is not None else path
    write_volume(target, data, spacing=spacing)
    return target


def bin_array(volume, factor: int) -> np.ndarray:
    """Mean over factor^3 blocks (a trailing remainder is dropped); integer data is rounded back to its dtype.

    Works slab by slab, so only ``factor`` slices are held in floating point at a time.
    """
    if factor < 1:
        raise ValueError(f"bin factor must be >= 1, got {factor}")
    z, y, x = (s // factor for s in volume.shape)
    if min(z, y, x) == 0:
        raise InputError(f"volume of shape {tuple(volume.shape)} is smaller than the bin factor {factor}")
    dtype = np.dtype(volume.dtype)
    out = np.empty((z, y, x), dtype=dtype)
    for k in range(z):
        slab = np.asarray(volume[k * factor : (k + 1) * factor, : y * factor, : x * factor], dtype=np.float64)
        block = slab.reshape(factor, y, factor, x, factor).mean(axis=(0, 2, 4))
        if dtype.kind in "ui":
            info = np.iinfo(dtype)
            block = np.clip(np.rint(block), info.min, info.max)
        out[k] = block.astype(dtype)
    return out


def binned_path(path: str | os.PathLike, factor: int, out_dir: str | os.PathLike | None = None) -> Path:
    path = Path(path)
    suffix = file_suffix(path)
    return Path(out_dir or path.parent) / f"{source_name(path.name)}_bin{factor}{suffix}"


def bin_volume(path: str | os.PathLike, factor: int = 2, out_path: str | os.PathLike | None = None) -> Path:
    """Bin a volume by an integer factor on every axis; the voxel spacing grows by the same factor."""
    path = Path(path)
    with open_volume(path) as reader:
        try:
            binned = bin_array(reader, factor)
        except InputError as exc:
            raise InputError(f"{path}: {exc}") from None
        spacing = tuple(s * factor for s in reader.spacing)
    if binned.dtype.kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(binned)))
        if bad:  # a NaN voxel poisons its whole block: the output would carry NaN where the input had data
            raise InputError(f"{path}: {bad} of {binned.size} binned voxels are NaN or infinite (the volume holds "
                             "NaN/inf values); replace them (e.g. with the background value) before binning")
    target = Path(out_path) if out_path is not None else binned_path(path, factor)
    write_volume(target, binned, spacing=spacing)
    return target


def _call(func, args):
    try:
        return func(*args), None
    except InputError as exc:
        return None, str(exc)
    except Exception as exc:  # noqa: BLE001 - one bad file must not stop the others
        return None, f"{args[0]}: unexpected error: {type(exc).__name__}: {exc}"


def run_each(func, jobs: list[tuple], processes: int = 1, desc: str = "files", progress: bool = True):
    """Run ``func(*job)`` for every job; returns (results, error lines). Bad files do not stop the others."""
    import concurrent.futures as cf
    import multiprocessing

    from tqdm import tqdm

    results, errors = [], []
    with tqdm(total=len(jobs), desc=desc, disable=not progress or not jobs, dynamic_ncols=True) as bar:
        if processes <= 1 or len(jobs) <= 1:
            outcomes = []
            for job in jobs:
                outcomes.append(_call(func, job))
                bar.update(1)
        else:
            with cf.ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=die_with_parent, initargs=(os.getpid(),)) as pool:
                outcomes = []
                for outcome in pool.map(_call, [func] * len(jobs), jobs):
                    outcomes.append(outcome)
                    bar.update(1)
    for result, error in outcomes:
        if error is None:
            results.append(result)
        else:
            errors.append(error)
    return results, errors


def list_files(folder: str | os.PathLike, suffixes: tuple[str, ...], recursive: bool = False) -> list[Path]:
    """Visible files under a folder (or the file itself) whose suffix is one of ``suffixes``."""
    folder = Path(folder)
    if folder.is_file():
        return [folder]
    if not folder.is_dir():
        raise InputError(f"{folder}: no such folder or file")
    if not recursive:
        candidates = list(folder.iterdir())
    else:
        # Symlinked project folders are followed, as patchify2d follows them (Path.glob('**') does not);
        # each real folder is walked once, so a link cycle cannot loop.
        candidates, seen = [], set()
        for top, dirs, names in os.walk(folder, followlinks=True):
            real = os.path.realpath(top)
            if real in seen:
                dirs[:] = []
                continue
            seen.add(real)
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            candidates.extend(Path(top) / n for n in names)
    return sorted(p for p in candidates
                  if p.is_file() and not p.name.startswith(".") and file_suffix(p) in suffixes)
