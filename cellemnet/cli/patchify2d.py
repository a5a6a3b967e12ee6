"""Cut 224x224 patches from folders of 2D EM images, drop near duplicates, store one HDF5 shard per folder.

IMDIR holds one subfolder per imaging project (a group); every group becomes OUTDIR/<group>.h5 and images
directly inside IMDIR form a group named after IMDIR. Patch names keep the image file stem:
``{stem}-LOC-2d-{y0}-{y1}_{x0}-{x1}``. OUTDIR/manifest.csv lists every patch cut, kept or duplicate.
Re-running skips complete shards.
"""
from __future__ import annotations

import argparse
import sys
import time

from cellemnet.constants import DEFAULT_CROP_SIZE, DEFAULT_HASH_SIZE, DEFAULT_MAX_HAMMING
from cellemnet.errors import cli_main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("imdir", help="folder with one subfolder of 2D images per imaging project")
    p.add_argument("outdir", help="folder for the shards (<group>.h5) and manifest.csv")
    p.add_argument("-cs", "--crop-size", type=int, default=DEFAULT_CROP_SIZE, help="patch size (default %(default)s)")
    p.add_argument("-hs", "--hash-size", type=int, default=DEFAULT_HASH_SIZE,
                   help="dHash size; hash_size**2 bits (default %(default)s)")
    p.add_argument("-d", "--max-distance", type=int, default=DEFAULT_MAX_HAMMING,
                   help="patches within this Hamming distance of an exemplar are duplicates (default %(default)s)")
    p.add_argument("-p", "--processes", type=int, default=1, help="groups processed in parallel (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the de-duplication walk order (default 0)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.add_argument("--only", metavar="GROUP", nargs="+", default=None,
                   help="process only these groups (one job per group in a workflow)")
    return p


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from cellemnet.dataset.patchify import (  # lazy: imports numba; --help stays fast
        PatchSettings,
        find_image_groups,
        run_sources,
        select_sources,
        summarize,
    )

    settings = PatchSettings(args.crop_size, args.hash_size, args.max_distance, args.seed)
    started = time.perf_counter()
    groups = find_image_groups(args.imdir, exclude=args.outdir)
    if args.only:
        groups = select_sources(groups, args.only, args.imdir)
    if not groups:
        print(f"patchify2d: no images or subfolders in {args.imdir}", file=sys.stderr)
        return 1
    results = run_sources(groups, args.outdir, settings, args.processes, progress=not args.quiet)
    text, code = summarize(results, "patchify2d", args.outdir, time.perf_counter() - started)
    print(text)
    return code


if __name__ == "__main__":
    sys.exit(main())
