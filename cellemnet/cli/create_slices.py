"""Slice 3D volumes (and their label volumes) into 2D tiff images on chosen planes.

    python evaluation/setup_benchmarks/create_slices.py IMAGES MASKS SAVE_DIR [-a PLANE ...] [-s SPACING]

IMAGES is a volume file or a folder of volumes; MASKS the matching label volume(s) (same file names), or `none`.
Slices go to SAVE_DIR/images and SAVE_DIR/masks as `{stem}_{axis}_{index}.tiff`. Planes: xy, xz, yz, or the
original's SimpleITK axis numbers 2 (xy), 1 (xz), 0 (yz). Every SPACING-th slice is taken, the last one included.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cellemnet.errors import InputError, cli_main
from cellemnet.evaluation.setup.slices import parse_plane, slice_folder, slice_volume


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", help="volume file or folder of volumes")
    parser.add_argument("masks", help="label volume file or folder (same names), or 'none'")
    parser.add_argument("save_dir", help="output folder (gets images/ and masks/)")
    parser.add_argument("-a", "--axes", nargs="+", default=["xy"], help="planes: xy xz yz (or 2 1 0); default xy")
    parser.add_argument("-s", "--spacing", type=int, default=1, help="take every SPACING-th slice (default 1)")
    return parser.parse_args(argv)


@cli_main
def main(argv=None) -> int:
    args = parse_args(argv)
    planes = [parse_plane(a) for a in args.axes]
    images = Path(args.images)
    masks = None if args.masks.lower() == "none" else Path(args.masks)
    if images.is_dir():
        if masks is not None and not masks.is_dir():
            raise InputError(f"{masks}: IMAGES is a folder, so MASKS must be a folder too (or 'none')")
        count = slice_folder(images, masks, args.save_dir, planes, args.spacing)
    elif images.exists() or ":" in str(images):
        count = slice_volume(images, masks, args.save_dir, planes, args.spacing)
    else:
        raise InputError(f"{images}: not found")
    print(f"wrote {count} slices ({', '.join(planes)}) to {args.save_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
