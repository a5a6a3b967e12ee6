"""Slice 3D volumes (and their label volumes) into 2D tiff images on chosen planes.

The code is cellemnet/cli/create_slices.py;
installed, this is the command `cellemnet-create-slices`."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout without installing

from cellemnet.cli.create_slices import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
