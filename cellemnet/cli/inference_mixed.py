"""Score a model on the All-Mitochondria mix: `python evaluation/inference_mixed.py CONFIG STATE [key=value ...]`.

The config lists the sub-benchmarks in parallel lists (benchmark_names, benchmark_dimensions, eval_classes,
thresholds, instance_match2d, mode3d, mask_prediction3d, save_dirs); each is read from
`{test_dir}/{2d|3d}/{name}/` and scored with its own settings in this one process. Logs `{name}_iou` for each and
`Test_Set_IoU` (their unweighted mean) to the training run, writes them to result.json in save_dir2d (default:
beside the checkpoint), and prints `Test_Set_IoU: <value>` last.
"""
import argparse
import sys

from cellemnet.errors import cli_main
from cellemnet.evaluation.config import load_eval_config
from cellemnet.evaluation.infer import run_inference_mixed


@cli_main
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="all_mito YAML")
    parser.add_argument("state", help="checkpoint written by evaluation/finetune.py")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of config keys")
    args = parser.parse_args(argv)

    config = load_eval_config(args.config, args.overrides, stage="mixed")

    metrics = run_inference_mixed(config, args.state)
    for name in config["benchmark_names"]:
        print(f"{name}_iou: {metrics[f'{name}_iou']:.6f}")
    print(f"Test_Set_IoU: {metrics['Test_Set_IoU']:.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
