"""Export a MoCoV2/SwAV checkpoint (ours or the published CEM500K/CEM1.5M files) as a plain ResNet-50 encoder.

The code is cellemnet/cli/export_encoder.py;
installed, this is the command `cellemnet-export-encoder`."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from cellemnet.cli.export_encoder import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
