"""Cut every 2D image of a folder into square patches.

    python evaluation/setup_benchmarks/create_patches.py IMAGE_DIR SAVE_DIR [-cs 256] [-l LABEL]

Tiles cover each image, overlapping evenly where a side is not a multiple of the crop size. With -l LABEL (for a
folder of masks) each patch is written as the binary mask (patch == LABEL), 0/1. Names: `{stem}_{y0}_{x0}.{ext}`.
"""
from __future__ import annotations

import argparse
import sys

from cellemnet.errors import InputError, cli_main
from cellemnet.evaluation.setup.patches import DEFAULT_PATCH_SIZE, patch_folder


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image_dir", help="folder of 2D images (or masks)")
    parser.add_argument("save_dir", help="output folder")
    parser.add_argument("-cs", "--crop-size", type=int, default=DEFAULT_PATCH_SIZE, help="patch side (default 256)")
    parser.add_argument("-l", "--label", type=int, default=0,
                        help="for masks: write (patch == LABEL) as 0/1; 0 (default) copies the values")
    return parser.parse_args(argv)


@cli_main
def main(argv=None) -> int:
    args = parse_args(argv)
    if args.crop_size < 1:
        raise InputError(f"--crop-size must be positive, got {args.crop_size}")
    count = patch_folder(args.image_dir, args.save_dir, crop=args.crop_size, label=args.label or None)
    print(f"wrote {count} patches of up to {args.crop_size}x{args.crop_size} to {args.save_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
