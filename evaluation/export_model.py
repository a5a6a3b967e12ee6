"""Export a fine-tuned U-Net as a bioimage.io model package: `python evaluation/export_model.py CHECKPOINT OUTDIR`.

The code is cellemnet/cli/export_model.py;
installed, this is the command `cellemnet-export-model`."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from cellemnet.cli.export_model import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
