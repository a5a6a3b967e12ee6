"""Convert 2D images to 8-bit grayscale, in place or into a copy, before patchify2d.

IMDIR holds one sub-folder per imaging project (as patchify2d expects; loose images in IMDIR are handled too).
Colour becomes gray, alpha is dropped, 16-bit/32-bit/float images are rescaled to 0..255 by their 0.1-99.9
percentile range. In place (no -o): files already 8-bit gray are left alone, others are rewritten in their own
format (JPEG is re-encoded, which is lossy: use -o to keep the originals). With -o SAVEDIR the converted copies
go to SAVEDIR/{group}/ (PNG for formats that are not lossless).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from cellemnet.dataset.preprocess import cleanup_image, copy_name, list_files, run_each
from cellemnet.errors import cli_main
from cellemnet.io import IMAGE_SUFFIXES


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("imdir", help="folder of image groups (one sub-folder per imaging project)")
    p.add_argument("-o", "--savedir", default=None, help="write converted copies here instead of in place")
    p.add_argument("-p", "--processes", type=int, default=1, help="images converted in parallel (default 1)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return p


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    started = time.perf_counter()
    root = Path(args.imdir)
    files = list_files(root, IMAGE_SUFFIXES, recursive=True)
    jobs = []
    for f in files:
        out = None
        if args.savedir:
            out = str(Path(args.savedir) / f.parent.relative_to(root) / copy_name(f))
        jobs.append((str(f), out))
    written, errors = run_each(cleanup_image, jobs, args.processes, "images", not args.quiet)
    for line in errors:
        print(f"error: {line}")
    converted = sum(w is not None for w in written)
    print(f"cleanup2d: {len(files)} images: {converted} written, {len(written) - converted} already 8-bit gray, "
          f"{len(errors)} failed; {time.perf_counter() - started:.1f} s")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
