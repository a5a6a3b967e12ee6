"""Train the informative-patch filter from hand labels.

The code is cellemnet/cli/train_patch_classifier.py;
installed, this is the command `cellemnet-train-patch-classifier`."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from cellemnet.cli.train_patch_classifier import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
