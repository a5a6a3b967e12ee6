"""SwAV pretraining: `python pretraining/train_swav.py pretraining/configs/swav.yaml [key=value ...]`.

The code is cellemnet/cli/train_swav.py;
installed, this is the command `cellemnet-train-swav`."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from cellemnet.cli.train_swav import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
