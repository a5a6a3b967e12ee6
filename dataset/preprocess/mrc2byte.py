"""Convert MRC volumes to unsigned 8-bit (no IMOD needed), in place or into OUTDIR.

The code is cellemnet/cli/mrc2byte.py;
installed, this is the command `cellemnet-mrc2byte`."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout without installing

from cellemnet.cli.mrc2byte import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
