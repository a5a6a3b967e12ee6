"""Cut 224x224 patches from folders of 2D EM images, drop near duplicates, store one HDF5 shard per folder.

The code is cellemnet/cli/patchify2d.py;
installed, this is the command `cellemnet-patchify2d`."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from cellemnet.cli.patchify2d import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
