"""Score a fine-tuned U-Net on a 2D test set: `python evaluation/inference2d.py CONFIG STATE [key=value ...]`.

The code is cellemnet/cli/inference2d.py;
installed, this is the command `cellemnet-inference2d`."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from cellemnet.cli.inference2d import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
