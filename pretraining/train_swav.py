"""SwAV pretraining: `python pretraining/train_swav.py pretraining/configs/swav.yaml [key=value ...]`.

Multi-GPU / multi-node:
`torchrun --nproc_per_node=N [--nnodes=M --rdzv_endpoint=HOST:PORT] pretraining/train_swav.py ...`.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from cellemnet.errors import cli_main  # noqa: E402


@cli_main
def main(argv=None) -> int:
    from cellemnet.pretraining.train import main_for  # lazy: imports torch; --help stays fast

    return main_for("swav", argv)


if __name__ == "__main__":
    sys.exit(main())
