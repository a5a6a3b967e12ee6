"""Score a frozen encoder with a linear per-pixel probe, against frozen random encoders of the same architecture.

    python evaluation/probe_encoder.py ENCODER DATA_DIR [key=value ...]

ENCODER: random_init, imagenet_supervised, cellemnet_mocov2, cellemnet_swav, or the path of an encoder file or
pretraining checkpoint (as the evaluation stage's `pretraining` key). DATA_DIR holds train/{images,masks} and
test/{images,masks} (or test2d/, as cellemnet.synthetic.make_benchmark writes; test_dir=... picks another).
The last line printed is `Probe_IoU: <encoder> (random: <random>, difference: <paired difference>)`.
Method and library API: cellemnet/evaluation/probe.py.
"""
import argparse
import sys

from cellemnet.config import describe
from cellemnet.errors import cli_main


def _keys_help() -> str:
    from cellemnet.evaluation.probe import PROBE_SCHEMA  # lazy: imports torch; --help stays fast

    return "keys:\n" + describe(PROBE_SCHEMA)


@cli_main
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, epilog=_keys_help(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("encoder", help="random_init, imagenet_supervised, cellemnet_mocov2, cellemnet_swav or a path")
    parser.add_argument("data_dir", help="benchmark folder with train/ and test/ (or test2d/)")
    parser.add_argument("overrides", nargs="*", help="key=value settings (see keys below)")
    args = parser.parse_args(argv)
    from cellemnet.evaluation.probe import load_probe_config, report_lines, run_probe  # lazy: imports torch

    config = load_probe_config(args.overrides)
    result = run_probe(args.encoder, args.data_dir, config)
    print("\n".join(report_lines(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
