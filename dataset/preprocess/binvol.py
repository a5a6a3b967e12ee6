"""Bin volumes by an integer factor on every axis (block mean), e.g. to bring fine FIB-SEM data nearer 10 nm.

The code is cellemnet/cli/binvol.py;
installed, this is the command `cellemnet-binvol`."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout without installing

from cellemnet.cli.binvol import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
