"""Score a fine-tuned U-Net on a 2D test set: `python evaluation/inference2d.py CONFIG STATE [key=value ...]`.

Reads test_dir2d/images (and masks/, paired by file name), saves predicted labels, iou.csv and result.json to save_dir2d
(default: beside the checkpoint), logs Test_Set_IoU to the training run, and prints `Test_Set_IoU: <value>` last.
Overrides: threshold2d, eval_classes2d, instance_match2d, tile_size2d, save_dir2d, test_dir2d, device, ...
"""
import argparse
import sys

from cellemnet.errors import cli_main
from cellemnet.evaluation.config import load_eval_config
from cellemnet.evaluation.infer import run_inference2d


@cli_main
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="benchmark YAML")
    parser.add_argument("state", help="checkpoint written by evaluation/finetune.py")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of config keys")
    args = parser.parse_args(argv)

    config = load_eval_config(args.config, args.overrides, stage="infer2d")

    score = run_inference2d(config, args.state)
    print(f"Test_Set_IoU: {score:.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
