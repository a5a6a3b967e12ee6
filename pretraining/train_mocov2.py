"""MoCoV2 pretraining: `python pretraining/train_mocov2.py pretraining/configs/mocov2.yaml [key=value ...]`.

The code is cellemnet/cli/train_mocov2.py;
installed, this is the command `cellemnet-train-mocov2`."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from cellemnet.cli.train_mocov2 import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
