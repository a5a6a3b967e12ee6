"""Bin volumes by an integer factor on every axis (block mean), e.g. to bring fine FIB-SEM data nearer 10 nm.

Writes ``{name}_bin{F}{suffix}`` beside each volume (or into OUTDIR); --inplace replaces the original instead
(atomically). The voxel spacing is multiplied by F; a trailing remainder smaller than F is dropped.
"""
from __future__ import annotations

import argparse
import sys
import time

from cellemnet.dataset.preprocess import bin_volume, binned_path, list_files, run_each
from cellemnet.errors import ConfigError, cli_main
from cellemnet.io import HDF5_SUFFIXES, VIDEO_SUFFIXES, VOLUME_SUFFIXES, ZARR_SUFFIXES


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("voldir", help="folder of volumes (or one volume)")
    p.add_argument("-f", "--factor", type=int, default=2, help="bin factor (default 2)")
    p.add_argument("-o", "--outdir", default=None, help="where binned volumes go (default: beside the originals)")
    p.add_argument("--inplace", action="store_true", help="replace each original by its binned version")
    p.add_argument("-p", "--processes", type=int, default=1, help="volumes binned in parallel (default 1)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return p


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    if args.factor < 2:
        raise ConfigError(f"--factor must be 2 or more, got {args.factor}")
    if args.inplace and args.outdir:
        raise ConfigError("give either --inplace or --outdir, not both")
    started = time.perf_counter()
    skip = VIDEO_SUFFIXES + HDF5_SUFFIXES + ZARR_SUFFIXES  # containers/videos: bin their exported volumes instead
    files = [f for f in list_files(args.voldir, VOLUME_SUFFIXES) if f.suffix.lower() not in skip
             and f"_bin{args.factor}" not in f.name]
    jobs = []
    for f in files:
        out = f if args.inplace else binned_path(f, args.factor, args.outdir)
        if not args.inplace and out.exists():
            continue
        jobs.append((str(f), args.factor, str(out)))
    written, errors = run_each(bin_volume, jobs, args.processes, "volumes", not args.quiet)
    for line in errors:
        print(f"error: {line}")
    print(f"binvol: {len(files)} volumes: {len(written)} binned by {args.factor}, {len(files) - len(jobs)} already "
          f"done, {len(errors)} failed; {time.perf_counter() - started:.1f} s")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
