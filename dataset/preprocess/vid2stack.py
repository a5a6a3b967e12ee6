"""Turn videos (.mp4, .avi) into (t, y, x) 8-bit nrrd stacks for patchify3d.

The code is cellemnet/cli/vid2stack.py;
installed, this is the command `cellemnet-vid2stack`."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout without installing

from cellemnet.cli.vid2stack import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
