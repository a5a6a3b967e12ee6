"""Convert MRC volumes to unsigned 8-bit (no IMOD needed), in place or into OUTDIR.

Intensities are rescaled by the volume's 0.1-99.9 percentile range; the voxel size is kept and IMOD's
unsigned-byte flag is set so every reader sees 0..255 (signed-byte MRCs are otherwise read as -128..127).
MRCs that already read as unsigned 8-bit are left alone when converting in place.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from cellemnet.dataset.preprocess import list_files, mrc_to_byte, run_each
from cellemnet.errors import cli_main
from cellemnet.io import MRC_SUFFIXES


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mrcdir", help="folder of .mrc/.rec/.map/.st/.ali files (or one file)")
    p.add_argument("-o", "--outdir", default=None, help="write converted copies here (default: in place)")
    p.add_argument("-p", "--processes", type=int, default=1, help="files converted in parallel (default 1)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return p


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    started = time.perf_counter()
    files = list_files(args.mrcdir, MRC_SUFFIXES)
    jobs = [(str(f), str(Path(args.outdir) / f.name) if args.outdir else None) for f in files]
    written, errors = run_each(mrc_to_byte, jobs, args.processes, "mrc", not args.quiet)
    for line in errors:
        print(f"error: {line}")
    made = sum(w is not None for w in written)
    print(f"mrc2byte: {len(files)} files: {made} converted, {len(written) - made} already 8-bit, "
          f"{len(errors)} failed; {time.perf_counter() - started:.1f} s")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
