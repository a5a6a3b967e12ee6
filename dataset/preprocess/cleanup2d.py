"""Convert 2D images to 8-bit grayscale, in place or into a copy, before patchify2d.

The code is cellemnet/cli/cleanup2d.py;
installed, this is the command `cellemnet-cleanup2d`."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout without installing

from cellemnet.cli.cleanup2d import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
