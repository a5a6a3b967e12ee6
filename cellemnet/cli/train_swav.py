"""SwAV pretraining: `python pretraining/train_swav.py pretraining/configs/swav.yaml [key=value ...]`.

Multi-GPU / multi-node:
`torchrun --nproc_per_node=N [--nnodes=M --rdzv_endpoint=HOST:PORT] pretraining/train_swav.py ...`.
"""
import sys

from cellemnet.errors import cli_main


@cli_main
def main(argv=None) -> int:
    from cellemnet.pretraining.train import main_for  # lazy: imports torch; --help stays fast

    return main_for("swav", argv)


if __name__ == "__main__":
    sys.exit(main())
