"""Score a fine-tuned U-Net on a 3D test set: `python evaluation/inference3d.py CONFIG STATE [key=value ...]`.

The code is cellemnet/cli/inference3d.py;
installed, this is the command `cellemnet-inference3d`."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from cellemnet.cli.inference3d import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
