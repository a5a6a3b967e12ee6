"""Score a model on the All-Mitochondria mix: `python evaluation/inference_mixed.py CONFIG STATE [key=value ...]`.

The code is cellemnet/cli/inference_mixed.py;
installed, this is the command `cellemnet-inference-mixed`."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from cellemnet.cli.inference_mixed import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
