"""MoCoV2 pretraining: `python pretraining/train_mocov2.py pretraining/configs/mocov2.yaml [key=value ...]`.

Multi-GPU / multi-node:
`torchrun --nproc_per_node=N [--nnodes=M --rdzv_endpoint=HOST:PORT] pretraining/train_mocov2.py ...`.
"""
import sys

from cellemnet.errors import cli_main


@cli_main
def main(argv=None) -> int:
    from cellemnet.pretraining.train import main_for  # lazy: imports torch; --help stays fast

    return main_for("mocov2", argv)


if __name__ == "__main__":
    sys.exit(main())
