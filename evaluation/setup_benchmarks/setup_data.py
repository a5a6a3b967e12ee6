"""Download the paper's benchmarks and convert them into the layout the evaluation reads.

The code is cellemnet/cli/setup_data.py;
installed, this is the command `cellemnet-setup-data`."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout without installing

from cellemnet.cli.setup_data import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
