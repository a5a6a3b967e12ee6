"""Rebuild subvolumes (flipbooks) of NZ slices around curated 3D patches, from the patch names.

The code is cellemnet/cli/reconstruct3d.py;
installed, this is the command `cellemnet-reconstruct3d`."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from cellemnet.cli.reconstruct3d import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
