"""Segment your own images or volumes: `python evaluation/predict.py MODEL INPUT OUTPUT [key=value ...]`
(see `--help`; the code is cellemnet/cli/predict.py)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cellemnet.cli.predict import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
