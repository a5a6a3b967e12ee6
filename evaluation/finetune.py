"""Fine-tune a ResNet U-Net on a benchmark: `python evaluation/finetune.py CONFIG [key=value ...]`.

The code is cellemnet/cli/finetune.py;
installed, this is the command `cellemnet-finetune`."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from cellemnet.cli.finetune import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
