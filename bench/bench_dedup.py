"""Benchmark: greedy de-duplication of dHashes (cellemnet.dataset.dedup) against the original's quadratic loop.

Prints, for 100k and 1M clustered hashes (near-duplicate clusters plus unique hashes): time, peak memory added
by the call (and per hash), exemplars kept with a checksum of their indices (to compare versions); and at 100k
the time of the quadratic reference (one scan + np.delete per exemplar), the speed-up and whether the exemplars
are identical. Every measurement runs in a fresh process so peak memory is its own.

    .venv/bin/python bench/bench_dedup.py                 # 100k and 1M
    .venv/bin/python bench/bench_dedup.py --sizes 100000  # quicker
    .venv/bin/python bench/bench_dedup.py --sizes 10000000 30000000 100000000  # the scale figures (~9 min)
    .venv/bin/python bench/bench_dedup.py --same-as 448b56d --sizes 10000000  # identical to an older version?

--same-as REV loads cellemnet/dataset/dedup.py as it was at git revision REV and checks that it picks the same
exemplars and assigns every hash to the same exemplar as the current code, on the same hashes and walk order
(the quadratic reference is too slow for that at millions of hashes). Both are compiled first and then timed back
to back in one process, so their ratio holds on a busy machine better than either time alone.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def clustered_hashes(n: int, seed: int = 0, unique_fraction: float = 0.25, mean_cluster: int = 5,
                     max_flips: int = 6) -> np.ndarray:
    """n hashes: 75 % in clusters (a random centre, members 0..max_flips bits away), 25 % unique random."""
    rng = np.random.default_rng(seed)
    n_unique = int(n * unique_fraction)
    n_members = n - n_unique
    centres = rng.integers(0, np.iinfo(np.uint64).max, max(1, n_members // mean_cluster), dtype=np.uint64,
                           endpoint=True)
    members = centres[rng.integers(0, len(centres), n_members)]
    flips = rng.integers(0, max_flips + 1, n_members)
    for j in range(max_flips):
        sel = flips > j
        members[sel] ^= np.uint64(1) << rng.integers(0, 64, int(sel.sum())).astype(np.uint64)
    hashes = np.concatenate([members, rng.integers(0, np.iinfo(np.uint64).max, n_unique, dtype=np.uint64,
                                                   endpoint=True)])
    rng.shuffle(hashes)
    return hashes


def _reset_peak() -> int:
    """Reset the kernel's peak-RSS counter (Linux); returns the current RSS in bytes."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _peak() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure_one(kind: str, n: int) -> dict:
    from cellemnet.dataset.dedup import deduplicate, deduplicate_reference  # lazy: bench_patchify3d times it

    hashes = clustered_hashes(n)
    deduplicate(clustered_hashes(2000, seed=1))  # load the compiled code (cached) before timing
    before = _reset_peak()
    t0, c0 = time.perf_counter(), time.process_time()
    keep = deduplicate_reference(hashes, 12, seed=0) if kind == "reference" else deduplicate(hashes, 12, seed=0)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"kind": kind, "n": n, "wall_s": wall, "cpu_s": cpu, "peak_extra_mib": (_peak() - before) / 2**20,
            "kept": int(len(keep)), "checksum": int(np.bitwise_xor.reduce(keep.astype(np.uint64)) if len(keep) else 0)}


def same_as_revision(revision: str, n: int) -> bool:
    """Exemplars and assignments of the current dedup against the one at a git revision, on n clustered hashes."""
    import importlib.util
    import tempfile

    from cellemnet.dataset import dedup

    root = Path(__file__).resolve().parents[1]
    source = subprocess.run(["git", "show", f"{revision}:cellemnet/dataset/dedup.py"], cwd=root, check=True,
                            capture_output=True, text=True).stdout
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "dedup_at_revision.py"
        path.write_text(source)
        spec = importlib.util.spec_from_file_location("dedup_at_revision", path)
        old = importlib.util.module_from_spec(spec)
        sys.modules["dedup_at_revision"] = old  # dataclasses look their module up
        spec.loader.exec_module(old)
        for version in (old, dedup):  # compile both first (numba caches only the current one's kernels)
            version.greedy_clusters(clustered_hashes(20000, seed=1), 12, seed=0)
        hashes = clustered_hashes(n)
        t0 = time.perf_counter()
        a = old.greedy_clusters(hashes, 12, seed=0)
        t1 = time.perf_counter()
        b = dedup.greedy_clusters(hashes, 12, seed=0)
        t2 = time.perf_counter()
    same = np.array_equal(a.exemplars, b.exemplars) and np.array_equal(a.exemplar_of, b.exemplar_of)
    print(f"{n:,} hashes: {revision} {t1 - t0:.1f} s, now {t2 - t1:.1f} s (ratio {(t2 - t1) / (t1 - t0):.2f}, back "
          f"to back); {len(b.exemplars):,} exemplars; same exemplars and assignments: {same}")
    return same


def run_isolated(kind: str, n: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--one", kind, str(n)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--reference-size", type=int, default=100_000)
    parser.add_argument("--same-as", metavar="REV", help="compare with dedup.py at this git revision instead")
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.same_as:
        return 0 if all(same_as_revision(args.same_as, n) for n in args.sizes) else 1
    if args.one:
        print(json.dumps(measure_one(args.one[0], int(args.one[1]))))
        return 0
    import numba

    print(f"machine: {os.cpu_count()} cores, numba threads {numba.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.1f}")
    results = {}
    for n in args.sizes:
        r = run_isolated("ours", n)
        results[n] = r
        print(f"ours     {n:>11,} hashes: {r['wall_s']:7.2f} s wall {r['cpu_s']:7.2f} s cpu  "
              f"peak +{r['peak_extra_mib']:8.1f} MiB ({r['peak_extra_mib'] * 2**20 / n:5.1f} B/hash)  "
              f"kept {r['kept']:,} (xor of kept {r['checksum']:#x})")
    n = args.reference_size
    ref = run_isolated("reference", n)
    ours = results.get(n) or run_isolated("ours", n)
    same = ref["kept"] == ours["kept"] and ref["checksum"] == ours["checksum"]
    print(f"reference {n:>10,} hashes: {ref['wall_s']:7.2f} s wall {ref['cpu_s']:7.2f} s cpu  "
          f"peak +{ref['peak_extra_mib']:6.1f} MiB  kept {ref['kept']:,}")
    print(f"speed-up at {n:,}: {ref['wall_s'] / ours['wall_s']:.1f}x wall, {ref['cpu_s'] / ours['cpu_s']:.1f}x cpu; "
          f"same exemplars: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
