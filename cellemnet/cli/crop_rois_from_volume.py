"""Split a large local volume into sparse random ROI cubes (nrrd, with the source's voxel spacing).

Cubes of CROP_SIZE that are mostly padding (voxels equal to --padding-value) are left out; up to GB gigabytes
of the others are drawn at random (seeded) and saved as ``SAVEDIR/{volume}-ROI-z{z0}-{z1}_y{y0}-{y1}_x{x0}-{x1}.nrrd``.
Every ROI keeps the volume name before ``-ROI-`` as its dataset name. Existing ROI files are kept.
"""
from __future__ import annotations

import argparse
import sys
import time

from cellemnet.dataset.ngff import crop_local_volume
from cellemnet.errors import cli_main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("volume", help="a volume file (nrrd, tif, mrc, file.h5:/key, store.zarr, ...)")
    p.add_argument("savedir", help="where the ROI nrrd files are written")
    p.add_argument("-cs", "--crop-size", type=int, default=256, help="cube size (default 256)")
    p.add_argument("-gb", "--gigabytes", type=float, default=5.0, help="size budget in GB (default 5)")
    p.add_argument("--padding-value", type=float, default=0, help="value of padding voxels (default 0)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random choice of cubes (default 0)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return p


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    started = time.perf_counter()
    report = crop_local_volume(args.volume, args.savedir, args.gigabytes, args.crop_size, args.padding_value,
                               args.seed, progress=not args.quiet)
    print(f"crop_rois_from_volume: {len(report.written)} ROIs written, {report.existing} already there "
          f"({report.candidates} cubes with content), in {args.savedir}; {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
