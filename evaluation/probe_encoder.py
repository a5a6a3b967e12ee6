"""Score a frozen encoder with a linear per-pixel probe, against frozen random encoders of the same architecture.

The code is cellemnet/cli/probe_encoder.py;
installed, this is the command `cellemnet-probe-encoder`."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from cellemnet.cli.probe_encoder import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
