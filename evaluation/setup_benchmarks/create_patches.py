"""Cut every 2D image of a folder into square patches.

The code is cellemnet/cli/create_patches.py;
installed, this is the command `cellemnet-create-patches`."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout without installing

from cellemnet.cli.create_patches import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
