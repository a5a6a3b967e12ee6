"""Segmenting images and volumes of any size with a trained model: `predict(model, input, output, ...)`.

* 2D (a folder of images, or one image): each image is predicted in overlapping tiles blended with a smooth
  window (`Predictor.predict_image`), and written as a TIFF.
* 3D: the volume is cut into core blocks (`plan_blocks`); each block is read with a halo on every side (clipped
  at the volume's edges), normalised with intensity limits sampled once from the whole volume, predicted with
  `Predictor.predict_volume` (the same stack / orthoplane code the evaluation stage runs on whole volumes), and
  only its core is kept. Memory therefore depends on the block size, never on the volume size.
* The output is first a Zarr array beside OUTPUT (`<OUTPUT>.part`) whose chunks are the core blocks, so each
  block writes whole chunks and no two blocks share one (torchrun ranks write side by side). After a block's
  chunks are written a marker `done/<block>` is written; a re-run with the same settings skips marked blocks, so
  a killed prediction resumes. When every block is done the work store becomes the output in one rename
  (OME-Zarr, with a pyramid) or is converted (TIFF/NRRD/MRC, which must fit in memory as uint8); a killed run
  never leaves anything at OUTPUT.
* Probabilities are stored as uint8 0-255; labels use the model's threshold (argmax for several classes);
  instances are the connected components of a binary model's labels.
"""
from __future__ import annotations

import itertools
import json
import os
import resource
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from cellemnet.errors import InputError
from cellemnet.evaluation.data import read_gray8
from cellemnet.io import (
    IMAGE_SUFFIXES,
    MRC_SUFFIXES,
    SITK_SUFFIXES,
    TIFF_SUFFIXES,
    atomic_write_text,
    check_writable,
    file_suffix,
    intensity_limits,
    open_volume,
    split_container_path,
    swap_in,
    to_uint8,
    write_image,
    write_volume,
)

OUTPUT_KINDS = ("probabilities", "labels", "instances")
DEFAULT_BLOCK = (64, 512, 512)  # 16 MiB of uint8 input; its probabilities (float32) are 64 MiB a class
DEFAULT_HALO = (16, 64, 64)
DEFAULT_BATCH = 2  # slices of up to 640 x 640 per forward pass: ~300 MB of ResNet-18 U-Net activations each (CPU)
WORK_SUFFIX = ".part"
DONE_FOLDER = "done"
SETTINGS_ATTR = "cellemnet_predict"
PYRAMID_MIN_SIDE = 256  # pyramid levels halve y and x until the next would be smaller than this
RESULT_NAME = "result.json"
FILE_OUTPUT_SUFFIXES = TIFF_SUFFIXES + SITK_SUFFIXES + MRC_SUFFIXES


# ---------------------------------------------------------------------------------------------- model
def load_model(path: str | os.PathLike, device: str = "auto", amp: bool = True):
    """(Predictor, metadata) from a fine-tuning checkpoint or an exported package (a folder or .zip holding
    rdf.yaml, or that rdf.yaml), through the one loader of each (cellemnet.evaluation.package). Metadata:
    threshold, thresholds ({"2d", "3d"}), num_classes, norms, encoder, source."""
    from cellemnet.evaluation.package import is_package, predictor_from_checkpoint, predictor_from_package

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: model not found")
    if is_package(path):
        return predictor_from_package(path, device, amp)
    if path.is_dir():
        raise InputError(f"{path}: not a model: a folder must hold rdf.yaml (an exported package)")
    return predictor_from_checkpoint(path.resolve(), device, amp)


def model_threshold(metadata: Mapping[str, Any], dims: str) -> float:
    """The model's threshold for 2D or 3D inputs (dims "2d"/"3d"), else its single threshold."""
    return float((metadata.get("thresholds") or {}).get(dims, metadata["threshold"]))


# ---------------------------------------------------------------------------------------------- blocks
@dataclass(frozen=True)
class Block:
    """One block: its index in the grid, the core it writes and the region (core + halo) it reads."""

    index: tuple[int, int, int]
    core: tuple[slice, slice, slice]
    outer: tuple[slice, slice, slice]

    @property
    def name(self) -> str:
        return "_".join(map(str, self.index))

    def core_in_outer(self) -> tuple[slice, slice, slice]:
        """The core's position inside the outer region (what is kept of the prediction)."""
        return tuple(slice(c.start - o.start, c.stop - o.start) for c, o in zip(self.core, self.outer))


def plan_blocks(shape: Sequence[int], block: Sequence[int], halo: Sequence[int]) -> list[Block]:
    """The core blocks covering a (z, y, x) volume in C order, each with its halo region clipped to the volume."""
    shape, block, halo = tuple(map(int, shape)), tuple(map(int, block)), tuple(map(int, halo))
    grids = [range(0, n, b) for n, b in zip(shape, block)]
    blocks = []
    for starts in itertools.product(*grids):
        core = tuple(slice(s, min(s + b, n)) for s, b, n in zip(starts, block, shape))
        outer = tuple(slice(max(c.start - h, 0), min(c.stop + h, n)) for c, h, n in zip(core, halo, shape))
        index = tuple(s // b for s, b in zip(starts, block))
        blocks.append(Block(index, core, outer))
    return blocks


def rank_blocks(blocks: Sequence[Block], rank: int, world: int) -> list[Block]:
    """The blocks one torchrun process predicts: every world-th, starting at its rank."""
    return list(blocks[rank::world])


# ---------------------------------------------------------------------------------------------- outputs
def quantise(probs: np.ndarray) -> np.ndarray:
    """float probabilities in 0..1 -> uint8 0..255 (rounded)."""
    return np.rint(np.clip(probs, 0.0, 1.0) * 255.0).astype(np.uint8)


def block_output(probs: np.ndarray, kind: str, threshold: float) -> np.ndarray:
    """(C, ...) float probabilities -> what is stored: uint8 probabilities ((...) for one class, else (C, ...)),
    or labels (threshold for one class, argmax for several; instances are labelled after all blocks)."""
    from cellemnet.evaluation.predict import labels_from_probabilities  # lazy: imports torch

    if kind == "probabilities":
        return quantise(probs[0] if probs.shape[0] == 1 else probs)
    return labels_from_probabilities(probs, threshold)


def output_shape(shape: Sequence[int], num_classes: int, kind: str) -> tuple[int, ...]:
    return (num_classes, *shape) if kind == "probabilities" and num_classes > 1 else tuple(shape)


def output_format(output: Path) -> str:
    """'ome-zarr', 'file' (TIFF/NRRD/NIfTI/MHA/MRC) or 'folder' from OUTPUT's name."""
    name = output.name.lower()
    if name.endswith(".zarr"):
        return "ome-zarr"
    if file_suffix(output) in FILE_OUTPUT_SUFFIXES:
        return "file"
    if output.suffix and not output.is_dir():
        raise InputError(f"{output}: cannot write predictions as '{output.suffix}' (use .ome.zarr, .tif, .nrrd, "
                         ".nii.gz, .mha, .mrc, or a folder)")
    return "folder"


def instance_labels(labels: np.ndarray) -> np.ndarray:
    """Connected components (26-connected in 3D, 8 in 2D) of a binary label array, uint32."""
    from scipy import ndimage

    structure = np.ones((3,) * labels.ndim, dtype=bool)
    instances, _ = ndimage.label(labels > 0, structure=structure)
    return instances.astype(np.uint32)


# ---------------------------------------------------------------------------------------------- memory
def rss_mb() -> float:
    """This process's resident memory now, in MB."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MB (ru_maxrss is in kB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6


# ---------------------------------------------------------------------------------------------- 3D
@dataclass
class VolumeRun:
    """What one volume prediction did, for result.json."""

    blocks: int = 0
    predicted: int = 0
    skipped: int = 0
    seconds_predicting: float = 0.0
    planes: tuple[int, ...] = ()
    notes: tuple[str, ...] = ()
    complete: bool = False
    halo: tuple[int, ...] = ()


def _work_store(output: Path) -> Path:
    return output.with_name(output.name + WORK_SUFFIX)


def _open_work(work: Path, settings: Mapping[str, Any], shape: tuple[int, ...], chunks: tuple[int, ...],
               dtype: str, create: bool):
    """The work store's level-0 array: reopened when its settings match, else made afresh (create=True) or
    waited for (other torchrun ranks)."""
    import zarr

    if work.exists():
        try:
            group = zarr.open_group(str(work), mode="a", zarr_format=2)
            if group.attrs.get(SETTINGS_ATTR) == json.loads(json.dumps(settings)) and "0" in group:
                return group, group["0"]
        except Exception:  # noqa: BLE001 - a damaged leftover is simply started again
            pass
        if not create:
            raise InputError(f"{work}: holds another prediction's work; let rank 0 start first")
        print(f"note: {work} holds a prediction with other settings (or is damaged); starting again")
        shutil.rmtree(work)
    if not create:
        raise InputError(f"{work}: not created by rank 0")
    group = zarr.open_group(str(work), mode="w", zarr_format=2)
    array = group.create_array("0", shape=shape, chunks=chunks, dtype=dtype, fill_value=0)
    (work / DONE_FOLDER).mkdir()
    group.attrs[SETTINGS_ATTR] = json.loads(json.dumps(settings))  # written last: the store is usable
    return group, array


def _done(work: Path) -> set[str]:
    folder = work / DONE_FOLDER
    return set(os.listdir(folder)) if folder.is_dir() else set()


def _mark_done(work: Path, block: Block) -> None:
    marker = work / DONE_FOLDER / block.name
    with open(marker, "w") as f:
        f.write("done\n")
        f.flush()
        os.fsync(f.fileno())


def predict_blocks(predictor, reader, array, work: Path, blocks: Sequence[Block], *, limits, mode: str,
                   axes: Sequence[int], kind: str, threshold: float, batch: int, max_blocks: int = 0,
                   progress: bool = True) -> tuple[int, int]:
    """Predict the blocks not yet marked done into `array` (chunks = cores), marking each when written.
    Returns (predicted, skipped)."""
    from tqdm import tqdm

    done = _done(work)
    todo = [b for b in blocks if b.name not in done]
    skipped = len(blocks) - len(todo)
    if max_blocks:
        todo = todo[:max_blocks]
    channel = (slice(None),) if array.ndim == 4 else ()
    bar = tqdm(total=len(todo), desc=f"predict {mode}", unit="block", disable=not progress, dynamic_ncols=True)
    for block in todo:
        volume = to_uint8(reader[block.outer], limits=limits, name=reader.path)
        volume = np.require(volume, requirements="W")  # memory-mapped / SimpleITK views are read-only: torch warns
        probs = predictor.predict_volume(volume, mode=mode, batch=batch, axes=axes)
        core = (slice(None),) + block.core_in_outer()
        array[channel + block.core] = block_output(probs[core], kind, threshold)
        _mark_done(work, block)
        bar.update(1)
    bar.close()
    return len(todo), skipped


def _barrier() -> None:
    """Wait for every torchrun process (nothing to wait for in a single process)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _downsample(data: np.ndarray, labels: bool) -> np.ndarray:
    """Halve the last two axes: nearest (every other pixel) for labels, the 2x2 mean for probabilities."""
    if labels:
        return data[..., ::2, ::2]
    h, w = data.shape[-2] // 2 * 2, data.shape[-1] // 2 * 2
    core = data[..., :h, :w].astype(np.float32)
    mean = (core[..., 0::2, 0::2] + core[..., 1::2, 0::2] + core[..., 0::2, 1::2] + core[..., 1::2, 1::2]) / 4
    if data.shape[-2] % 2 or data.shape[-1] % 2:  # odd sides: the last row/column is kept as it is
        out = data[..., ::2, ::2].astype(np.float32)
        out[..., : h // 2, : w // 2] = mean
        mean = out
    return np.rint(mean).astype(data.dtype)


def _build_pyramid(group, labels: bool, progress: bool) -> int:
    """Add levels 1, 2, ... to the work store, each halving y and x of the one before, chunk by chunk.
    Returns the number of levels (with level 0)."""
    from tqdm import tqdm

    level = 0
    while True:
        src = group[str(level)]
        h, w = src.shape[-2:]
        if min(h, w) // 2 < PYRAMID_MIN_SIDE:
            return level + 1
        shape = src.shape[:-2] + ((h + 1) // 2, (w + 1) // 2)
        dst = group.create_array(str(level + 1), shape=shape, chunks=src.chunks, dtype=src.dtype, fill_value=0,
                                 overwrite=True)
        grid = [range(0, n, c) for n, c in zip(shape, src.chunks)]
        cells = list(itertools.product(*grid))
        for starts in tqdm(cells, desc=f"pyramid level {level + 1}", unit="chunk", disable=not progress,
                           leave=False):
            out_sl = tuple(slice(s, min(s + c, n)) for s, c, n in zip(starts, src.chunks, shape))
            in_sl = out_sl[:-2] + tuple(slice(s.start * 2, s.stop * 2) for s in out_sl[-2:])
            dst[out_sl] = _downsample(np.asarray(src[in_sl]), labels)[..., : out_sl[-2].stop - out_sl[-2].start,
                                                                      : out_sl[-1].stop - out_sl[-1].start]
        level += 1


def _multiscales(name: str, levels: int, spacing: Sequence[float], channels: bool, unit: str | None) -> list:
    def axis(n: str) -> dict:
        entry = {"name": n, "type": "space"}
        if unit:
            entry["unit"] = unit
        return entry

    axes = ([{"name": "c", "type": "channel"}] if channels else []) + [axis(n) for n in ("z", "y", "x")]
    datasets = []
    for level in range(levels):
        scale = [float(spacing[0]), float(spacing[1]) * 2**level, float(spacing[2]) * 2**level]
        datasets.append({"path": str(level), "coordinateTransformations": [
            {"type": "scale", "scale": ([1.0] if channels else []) + scale}]})
    return [{"version": "0.4", "name": name, "axes": axes, "datasets": datasets}]


def input_unit(input_path: str) -> str | None:
    """The spatial unit an OME-Zarr input declares (kept in the output), else None."""
    file, key, kind = split_container_path(input_path)
    if kind != "zarr":
        return None
    import zarr

    try:
        node = zarr.open(str(file), mode="r", path=key) if key else zarr.open(str(file), mode="r")
        attrs = dict(node.attrs)
    except Exception:  # noqa: BLE001 - the reader reports real problems
        return None
    multiscales = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales") or [{}]
    units = [a.get("unit") for a in multiscales[0].get("axes", []) if isinstance(a, dict) and a.get("type") == "space"]
    return units[-1] if units and units[-1] else None


def predict_volume_file(predictor, metadata: Mapping[str, Any], input_path: str, output: Path, *, mode: str,
                        kind: str, block: Sequence[int], halo: Sequence[int], batch: int, max_blocks: int = 0,
                        rank: int = 0, world: int = 1, progress: bool = True) -> tuple[VolumeRun, dict]:
    """Predict one volume block by block into `output` (.zarr: OME-Zarr, else a TIFF/NRRD/NIfTI/MHA/MRC file).
    Returns (what was done, what was read)."""
    from cellemnet.evaluation.predict import plane_axes  # lazy: imports torch

    run = VolumeRun()
    with open_volume(input_path) as reader:
        shape = reader.shape
        limits = intensity_limits(reader, name=reader.path)
        axes, notes = plane_axes(shape, mode)
        for note in notes:
            print(f"note: {reader.path}: {note}")
        threshold = model_threshold(metadata, "3d")
        if kind == "instances" and predictor.num_classes != 1:
            raise InputError(f"{metadata['source']}: output=instances needs a binary (1-class) model, this one has "
                             f"{predictor.num_classes} classes")
        if mode == "stack":  # xy slices need no context from other slices
            halo = (0, *halo[1:])
        if output_format(output) == "file" and kind == "probabilities" and predictor.num_classes > 1:
            raise InputError(f"{output}: several classes' probabilities need an OME-Zarr output (.ome.zarr), or "
                             "output=labels")
        blocks = plan_blocks(shape, block, halo)
        store_kind = "labels" if kind == "instances" else kind
        settings = {"input": str(Path(split_container_path(input_path)[0]).resolve()), "address": input_path,
                    "shape": list(shape), "model": metadata["source"], "model_stamp": _file_stamp(metadata["source"]),
                    "mode": mode, "axes": list(axes),
                    "output": store_kind, "threshold": threshold, "block": list(block), "halo": list(halo),
                    "limits": list(limits)}
        out_shape = output_shape(shape, predictor.num_classes, store_kind)
        chunks = tuple(min(b, n) for b, n in zip(block, shape))
        chunks = ((out_shape[0],) + chunks) if len(out_shape) == 4 else chunks
        work = _work_store(output)
        if rank == 0:
            group, array = _open_work(work, settings, out_shape, chunks, "uint8", create=True)
        _barrier()  # the other ranks open the store rank 0 made (or kept)
        if rank != 0:
            group, array = _open_work(work, settings, out_shape, chunks, "uint8", create=False)
        mine = rank_blocks(blocks, rank, world)
        done_at_start = len(_done(work))
        started = time.time()
        run.predicted, run.skipped = predict_blocks(
            predictor, reader, array, work, mine, limits=limits, mode=mode, axes=axes, kind=store_kind,
            threshold=threshold, batch=batch, max_blocks=max_blocks, progress=progress and rank == 0)
        run.blocks, run.planes, run.notes, run.halo = len(blocks), tuple(axes), tuple(notes), tuple(halo)
        info = {"path": input_path, "shape": list(shape), "dtype": str(reader.dtype), "spacing": list(reader.spacing),
                "intensity_limits": list(limits), "lazy": reader.lazy}
        spacing = reader.spacing
    _barrier()  # every rank's blocks are written
    run.seconds_predicting = time.time() - started
    if world > 1:  # rank 0 reports the blocks of every process
        run.skipped, run.predicted = done_at_start, len(_done(work)) - done_at_start
    if rank != 0:
        return run, info
    if len(_done(work) & {b.name for b in blocks}) < len(blocks):
        print(f"{len(_done(work))} of {len(blocks)} blocks done in {work}; run again to continue")
        return run, info
    _finish(group, work, output, kind, spacing, unit=input_unit(input_path), progress=progress)
    run.complete = True
    return run, info


def _file_stamp(path: str) -> list:
    """Size and modification time of a model file (a retrained model under the same name is not resumed)."""
    try:
        st = os.stat(path)
    except OSError:
        return []
    return [st.st_size, st.st_mtime_ns]


def _finish(group, work: Path, output: Path, kind: str, spacing, unit: str | None, progress: bool) -> None:
    """Turn a work store whose blocks are all done into the output, which appears in one rename."""
    labels = kind != "probabilities"
    if output_format(output) == "ome-zarr":
        if kind == "instances":
            _instances_in_place(group)
        levels = _build_pyramid(group, labels, progress)
        group.attrs["multiscales"] = _multiscales(output.name.split(".")[0], levels, spacing,
                                                  channels=group["0"].ndim == 4, unit=unit)
        if labels:
            group.attrs["image-label"] = {"version": "0.4"}
        shutil.rmtree(work / DONE_FOLDER)
        del group.attrs[SETTINGS_ATTR]
        swap_in(work, output)
        return
    data = np.asarray(group["0"][...])
    if kind == "instances":
        data = instance_labels(data)
    write_volume(output, data, spacing=spacing)
    shutil.rmtree(work)


def _instances_in_place(group) -> None:
    """Replace level 0's binary labels by connected-component instances (uint32; needs 4 bytes a voxel)."""
    labels = np.asarray(group["0"][...])
    chunks = group["0"].chunks
    instances = instance_labels(labels)
    del labels
    target = group.create_array("0", shape=instances.shape, chunks=chunks, dtype="uint32", fill_value=0,
                                overwrite=True)
    target[...] = instances


# ---------------------------------------------------------------------------------------------- 2D
def image_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and file_suffix(p) in IMAGE_SUFFIXES)
    if not files:
        raise InputError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
    return files


def predict_image_file(predictor, metadata: Mapping[str, Any], image_path: Path, output: Path, *, kind: str,
                       tile: int, overlap: int, batch: int) -> dict:
    """Predict one 2D image in blended tiles and write it (a TIFF; several classes' probabilities as (C, H, W))."""
    image = read_gray8(image_path)  # as the evaluation stage reads test images
    probs = predictor.predict_image(image, tile_size=tile, overlap=overlap, batch=batch)
    if kind == "instances":
        if predictor.num_classes != 1:
            raise InputError(f"{metadata['source']}: output=instances needs a binary (1-class) model")
        data = instance_labels(block_output(probs, "labels", model_threshold(metadata, "2d")))
    else:
        data = block_output(probs, kind, model_threshold(metadata, "2d"))
    if data.ndim == 3:
        write_volume(output, data)
    else:
        write_image(output, data)
    return {"path": str(image_path), "shape": list(image.shape), "output": str(output)}


def _is_2d_input(input_path: str) -> bool:
    path = Path(input_path)
    if path.is_dir() and not path.name.lower().endswith(".zarr"):
        return True
    if file_suffix(path) in IMAGE_SUFFIXES and file_suffix(path) not in TIFF_SUFFIXES:
        return True
    if file_suffix(path) in TIFF_SUFFIXES:
        with open_volume(path) as reader:
            return reader.shape[0] == 1
    return False


def _stem(path: str) -> str:
    file, key, _ = split_container_path(path)
    name = Path(file).name
    for suffix in (".ome.zarr", ".nii.gz"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem + (f"_{key.replace('/', '_')}" if key else "")


# ---------------------------------------------------------------------------------------------- predict
def predict(model: str | os.PathLike, input_path: str | os.PathLike, output: str | os.PathLike, *,
            mode: str = "orthoplane", kind: str = "probabilities", block: Sequence[int] = DEFAULT_BLOCK,
            halo: Sequence[int] = DEFAULT_HALO, tile: int = 512, overlap: int = 64, batch: int = DEFAULT_BATCH,
            device: str = "auto", amp: bool = True, max_blocks: int = 0, progress: bool = True,
            loaded: tuple[Any, Mapping[str, Any]] | None = None) -> dict:
    """Segment `input_path` (a folder of 2D images, one image, or any volume `cellemnet.io` reads) with `model`
    into `output` and write result.json beside it. Returns the result record.

    output: for volumes a .ome.zarr / .zarr store (OME-Zarr) or a .tif/.nrrd/.nii.gz/.mha/.mrc file; a folder
    gets `<input stem>.ome.zarr` (volumes) or `<image stem>.tif` for each image (2D).
    kind: probabilities (uint8 0-255), labels (the model's threshold) or instances (binary models).
    `loaded`: an already loaded (Predictor, metadata) pair (benchmarks measure memory above it).
    """
    from cellemnet.runtime import init_distributed, torchrun_rank  # lazy: imports torch

    started = time.time()
    if kind not in OUTPUT_KINDS:
        raise InputError(f"output kind must be one of {', '.join(OUTPUT_KINDS)}, got '{kind}'")
    input_path, output = os.fspath(input_path), Path(output)
    if not Path(split_container_path(input_path)[0]).exists():
        raise InputError(f"{split_container_path(input_path)[0]}: input not found")
    fmt = output_format(output)  # a bad OUTPUT is refused before the model is loaded
    rank, world = torchrun_rank()
    if loaded is None:
        if world > 1:
            _, dev = init_distributed(device)
            device = str(dev)
        predictor, metadata = load_model(model, device, amp)
    else:
        predictor, metadata = loaded
    rss_model = rss_mb()
    record: dict[str, Any] = {"version": 1, "kind": "predict", "rank": rank, "model": dict(_plain(metadata)),
                              "output_kind": kind, "device": str(predictor.device), "amp": bool(predictor.amp)}
    if _is_2d_input(input_path):
        folder = output if fmt == "folder" else None
        if folder is None:
            if Path(input_path).is_dir():
                raise InputError(f"{output}: a folder of images needs a folder OUTPUT")
        check_writable(folder or output.parent)
        images = image_files(Path(input_path)) if Path(input_path).is_dir() else [Path(input_path)]
        from tqdm import tqdm

        items = []
        for image in tqdm(images, desc="predict 2d", unit="image", disable=not progress):
            target = folder / f"{image.stem}.tif" if folder is not None else output
            items.append(predict_image_file(predictor, metadata, image, target, kind=kind, tile=tile,
                                            overlap=overlap, batch=batch))
        record.update({"dims": "2d", "input": {"path": input_path, "images": items},
                       "how": {"tile": tile, "overlap": overlap, "batch": batch}, "output": str(folder or output),
                       "complete": True})
        result_dir = folder or output.parent
    else:
        if fmt == "folder":
            output = output / f"{_stem(input_path)}.ome.zarr"
        check_writable(output.parent)
        run, info = predict_volume_file(predictor, metadata, input_path, output, mode=mode, kind=kind, block=block,
                                        halo=halo, batch=batch, max_blocks=max_blocks, rank=rank, world=world,
                                        progress=progress)
        record.update({"dims": "3d", "input": info,
                       "how": {"mode": mode, "planes": list(run.planes), "notes": list(run.notes),
                               "block": list(block), "halo": list(run.halo), "batch": batch, "processes": world},
                       "blocks": {"total": run.blocks, "predicted": run.predicted, "skipped_done": run.skipped},
                       "blocks_per_second": round(run.predicted / run.seconds_predicting, 4)
                       if run.seconds_predicting > 0 else None,
                       "output": str(output), "complete": run.complete})
        result_dir = output.parent
    peak = peak_rss_mb()
    record.update({"seconds": round(time.time() - started, 3),
                   "memory_mb": {"after_model": round(rss_model, 1), "peak": round(peak, 1),
                                 "peak_above_model": round(peak - rss_model, 1)}})
    if rank == 0:
        atomic_write_text(result_dir / RESULT_NAME, json.dumps(record, indent=2) + "\n")
    return record


def _plain(metadata: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
    for key, value in metadata.items():
        yield key, json.loads(json.dumps(value, default=str))

