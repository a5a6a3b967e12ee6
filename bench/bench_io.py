"""Speed and memory figures for cellemnet.io and cellemnet.synthetic (prints a table; no asserts).

    .venv/bin/python bench/bench_io.py

Figures: import time of cellemnet.io, synthetic image/volume generation per look, to_uint8 on 16-bit and float
data, and peak memory of streaming a volume from HDF5 slice by slice versus reading it whole.
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

from cellemnet import io, synthetic


def timed(func, repeat: int = 3) -> str:
    """Best wall time and the CPU time of that run (CPU time is steadier on a shared machine)."""
    best = (float("inf"), float("inf"))
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        func()
        best = min(best, (time.perf_counter() - wall, time.process_time() - cpu))
    return f"{best[0] * 1000:7.0f} ms wall {best[1] * 1000:7.0f} ms cpu"


def main() -> int:
    rows: list[tuple[str, str]] = []
    code = "import time; t = time.perf_counter(); import cellemnet.io; print(time.perf_counter() - t)"
    seconds = min(float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                       check=True).stdout) for _ in range(3))
    rows.append(("import cellemnet.io (numpy included)", f"{seconds * 1000:7.0f} ms wall"))

    for look in synthetic.LOOKS:
        rows.append((f"make_image 512x512 look={look}", timed(lambda: synthetic.make_image((512, 512), look, seed=1))))
    rows.append(("make_volume 24x256x256 fib_sem", timed(lambda: synthetic.make_volume((24, 256, 256), "fib_sem",
                                                                                      seed=1), 1)))

    rng = np.random.default_rng(0)
    raw16 = rng.integers(1000, 4001, (2048, 2048)).astype(np.uint16)
    rows.append(("to_uint8 2048x2048 uint16", timed(lambda: io.to_uint8(raw16))))
    tomo = rng.normal(0, 0.1, (64, 512, 512)).astype(np.float32)
    rows.append(("to_uint8 64x512x512 float32", timed(lambda: io.to_uint8(tomo), 1)))

    with tempfile.TemporaryDirectory() as tmp:
        address = f"{Path(tmp) / 'big.h5'}:/raw"
        volume = rng.integers(0, 65535, (64, 1024, 1024)).astype(np.uint16)  # 128 MiB
        io.write_volume(address, volume)
        del volume
        tracemalloc.start()
        with io.open_volume(address) as reader:
            limits = io.intensity_limits(reader)
            for section in reader.slices(0):
                io.to_uint8(section, limits)
        streamed = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        tracemalloc.start()
        data, _ = io.read_volume(address)
        io.to_uint8(np.asarray(data[...]))
        whole = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    rows.append(("peak memory, 64x1024x1024 uint16 h5, streamed", f"{streamed / 2**20:.0f} MiB"))
    rows.append(("peak memory, same volume read whole", f"{whole / 2**20:.0f} MiB"))
    rows.append(("ratio whole / streamed", f"{whole / max(streamed, 1):.1f}x"))

    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
