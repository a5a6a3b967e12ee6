"""Filter de-duplicated patch shards down to the final curated dataset.

The code is cellemnet/cli/classify_patches.py;
installed, this is the command `cellemnet-classify-patches`."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from cellemnet.cli.classify_patches import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
