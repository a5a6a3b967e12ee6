"""Score a fine-tuned U-Net on a 3D test set: `python evaluation/inference3d.py CONFIG STATE [key=value ...]`.

Reads test_dir3d/images (and masks/, paired by file name), saves predicted labels, iou.csv and result.json to save_dir3d
(default: beside the checkpoint), logs Test_Set_IoU to the training run, and prints `Test_Set_IoU: <value>` last.
mode3d is the config's (stack or orthoplane) unless overridden here, e.g. `mode3d=stack`.
Overrides: mode3d, threshold3d, eval_classes3d, mask_prediction3d, batch3d, save_dir3d, test_dir3d, device, ...
"""
import argparse
import sys

from cellemnet.errors import cli_main
from cellemnet.evaluation.config import load_eval_config
from cellemnet.evaluation.infer import run_inference3d


@cli_main
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="benchmark YAML")
    parser.add_argument("state", help="checkpoint written by evaluation/finetune.py")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of config keys")
    args = parser.parse_args(argv)

    config = load_eval_config(args.config, args.overrides, stage="infer3d")

    score = run_inference3d(config, args.state)
    print(f"Test_Set_IoU: {score:.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
