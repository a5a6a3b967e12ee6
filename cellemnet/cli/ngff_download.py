"""Download sparse random ROI cubes from OME-Zarr / NGFF volumes listed in a CSV, as nrrd with voxel spacing.

CSV columns: ``url`` (or ``download_url``: a local path or an fsspec URL such as s3://, https://, gs://),
``volume_name``; optional ``mip`` (resolution level, default 0), ``crop_size`` (default 256), ``invert``
(true/false), ``padding_value`` (default 0), ``anonymous`` (true: S3 without credentials; also implied by
``source=openorganelle``). Cubes that are mostly padding (judged on the coarsest level) are left out; up to
GB gigabytes of the others are drawn at random (seeded) and saved as
``SAVEDIR/{volume_name}_s{mip}-ROI-z{z0}-{z1}_y{y0}-{y1}_x{x0}-{x1}.nrrd`` with the level's spacing (z, y, x).
Existing cubes are kept, so a re-run resumes. Remote URLs need the matching fsspec backend (s3fs, gcsfs, ...).
"""
from __future__ import annotations

import argparse
import sys
import time

from cellemnet.dataset.ngff import crop_ngff, read_ngff_csv
from cellemnet.errors import InputError, cli_main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("csv", help="download list (see above)")
    p.add_argument("savedir", help="where the ROI nrrd files are written")
    p.add_argument("-gb", "--gigabytes", type=float, default=5.0, help="size budget per volume in GB (default 5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random choice of cubes (default 0)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    return p


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    started = time.perf_counter()
    rows = read_ngff_csv(args.csv)
    written = existing = 0
    errors = []
    for row in rows:
        try:
            report = crop_ngff(row["url"], row["volume_name"], args.savedir, args.gigabytes, row["level"],
                               row["crop_size"], row["padding_value"], row["invert"], args.seed,
                               {"anon": True} if row["anonymous"] else None, progress=not args.quiet)
        except InputError as exc:
            errors.append(str(exc))
            continue
        written += len(report.written)
        existing += report.existing
        print(f"{row['volume_name']}: {len(report.written)} cubes written, {report.existing} already there "
              f"({report.candidates} cubes with content)")
    for line in errors:
        print(f"error: {line}")
    print(f"ngff_download: {len(rows)} volumes, {len(errors)} failed; {written} cubes written, {existing} already "
          f"there, in {args.savedir}; {time.perf_counter() - started:.1f} s")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
