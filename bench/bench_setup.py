"""Benchmark setup conversion: memory of CREMI cleft binarisation (slice by slice vs whole) and slicing speed.

    .venv/bin/python bench/bench_setup.py [--shape 16 1024 1024]

The CREMI cleft labels are uint64, 8x the size of the raw volume; the original read them whole (and copied them
once more). Here they are binarised one slice at a time. Figures are printed side by side with their ratio.
"""
from __future__ import annotations

import argparse
import tempfile
import time
import tracemalloc
from pathlib import Path

import h5py
import numpy as np

from cellemnet.evaluation.setup.convert import CREMI_NO_CLEFT, read_cremi
from cellemnet.evaluation.setup.slices import slice_volume
from cellemnet.io import write_volume


def write_cremi(path: Path, shape: tuple[int, int, int]) -> None:
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        raw = f.create_dataset("volumes/raw", data=rng.integers(0, 255, shape, dtype=np.uint8), chunks=(1, *shape[1:]))
        raw.attrs["resolution"] = np.array([40.0, 4.0, 4.0])
        clefts = f.create_dataset("volumes/labels/clefts", shape=shape, dtype=np.uint64, chunks=(1, *shape[1:]))
        for z in range(shape[0]):
            plane = np.full(shape[1:], CREMI_NO_CLEFT, dtype=np.uint64)
            plane[100:140, 100:140] = 7
            clefts[z] = plane


def whole_volume_way(path: Path) -> np.ndarray:
    """The original's way: read all labels, compare the whole array."""
    with h5py.File(path, "r") as f:
        raw = f["volumes/raw"][...]
        clefts = f["volumes/labels/clefts"][...]
    del raw
    return (clefts.astype(np.uint64) != CREMI_NO_CLEFT).astype(np.uint8)


def peak(fn, *args):
    tracemalloc.start()
    t = time.perf_counter()
    out = fn(*args)
    elapsed = time.perf_counter() - t
    _, top = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return out, top / 2**20, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shape", type=int, nargs=3, default=[16, 1024, 1024])
    args = parser.parse_args()
    shape = tuple(args.shape)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        path = tmp / "sample_A_20160501.hdf"
        write_cremi(path, shape)
        whole, whole_mb, whole_s = peak(whole_volume_way, path)
        (_, streamed, _), streamed_mb, streamed_s = peak(read_cremi, path)
        assert np.array_equal(whole, streamed)
        print(f"CREMI {shape} raw+clefts -> mask (identical results)")
        print(f"  peak memory, whole labels (original)   {whole_mb:8.0f} MiB  {whole_s:6.2f} s")
        print(f"  peak memory, slice by slice (here)     {streamed_mb:8.0f} MiB  {streamed_s:6.2f} s")
        print(f"  ratio whole / streamed                 {whole_mb / streamed_mb:8.1f}x")

        volume = np.random.default_rng(1).integers(0, 255, (32, 256, 256), dtype=np.uint8)
        write_volume(tmp / "v.nrrd", volume)
        write_volume(tmp / "m.nrrd", (volume > 128).astype(np.uint8))
        t = time.perf_counter()
        n = slice_volume(tmp / "v.nrrd", tmp / "m.nrrd", tmp / "slices", planes=["xy", "xz", "yz"])
        elapsed = time.perf_counter() - t
        print(f"create_slices 32x256x256, 3 planes: {n} image+mask pairs in {elapsed:.2f} s "
              f"({n / elapsed:.0f} pairs/s)")


if __name__ == "__main__":
    main()
