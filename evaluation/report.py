"""Turn the MLflow fine-tuning runs into tables and a bar chart of test IoU by benchmark and arm, over seeds.

The code is cellemnet/cli/report.py;
installed, this is the command `cellemnet-report`."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from cellemnet.cli.report import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
