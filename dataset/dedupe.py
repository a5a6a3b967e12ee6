"""De-duplicate patch shards against each other (across datasets), after the per-source pass.

The code is cellemnet/cli/dedupe.py;
installed, this is the command `cellemnet-dedupe`."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from cellemnet.cli.dedupe import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
