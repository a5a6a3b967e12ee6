"""Rebuild subvolumes (flipbooks) of NZ slices around curated 3D patches, from the patch names.

PATCHDIR holds curated patches: shards (*.h5) or image files named after patches, in any sub-folder.
For each patch ``{volume}-LOC-{axis}_{slice}_{y0}-{y1}_{x0}-{x1}`` the volume of that exact name is found in the
VOLDIRs and slices ``slice - NZ//2 .. slice + NZ//2`` of the same box are saved, slice first, as
``SAVEDIR/{dataset}/{volume}-LOC-{axis}_{low}-{high}_{y0}-{y1}_{x0}-{x1}.tif`` (dataset = volume name before
``-ROI-``; every ROI of a dataset is handled). Patches too close to the volume's edge are skipped; existing
outputs are kept, so a re-run only adds what is missing.
"""
from __future__ import annotations

import argparse
import sys
import time

from cellemnet.errors import cli_main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("patchdir", help="folder of curated patches (shards or image files named after patches)")
    p.add_argument("-vd", "--volume-dirs", nargs="+", required=True, help="folders holding the source volumes")
    p.add_argument("-sd", "--save-dir", required=True, help="where subvolumes are written (one folder per dataset)")
    p.add_argument("-nz", type=int, default=5, help="slices per subvolume, centred on the patch (default 5)")
    p.add_argument("-p", "--processes", type=int, default=1, help="volumes processed in parallel (default 1)")
    p.add_argument("--limit", type=int, default=None, help="at most this many patches per dataset (seeded draw)")
    p.add_argument("--seed", type=int, default=0, help="seed of the --limit draw (default 0)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    return p


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from cellemnet.dataset.reconstruct import reconstruct  # lazy: imports numba; --help stays fast

    started = time.perf_counter()
    report = reconstruct(args.patchdir, args.volume_dirs, args.save_dir, args.nz, args.processes, args.limit,
                         args.seed, progress=not args.quiet)
    for line in report.errors:
        print(f"error: {line}")
    print(f"reconstruct3d: {report.written} subvolumes written, {report.existing} already there, "
          f"{report.out_of_bounds} too close to a volume edge for -nz {args.nz}, {report.ignored_2d} 2D patches "
          f"ignored; in {args.save_dir}; {time.perf_counter() - started:.1f} s")
    return 1 if report.errors else 0


if __name__ == "__main__":
    sys.exit(main())
