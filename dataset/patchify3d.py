"""Cut 224x224 patches from 3D EM volumes on xy/xz/yz cross sections, drop near duplicates, one shard per volume.

The code is cellemnet/cli/patchify3d.py;
installed, this is the command `cellemnet-patchify3d`."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from cellemnet.cli.patchify3d import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
