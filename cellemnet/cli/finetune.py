"""Fine-tune a ResNet U-Net on a benchmark: `python evaluation/finetune.py CONFIG [key=value ...]`.

Every config key can be overridden on the command line (`iters=500 pretraining=random_init data_root=/data`).
`encoder` is resnet50 (the paper's), resnet34 or resnet18. One `seed` fixes the model init, data order and
augmentation: several seeds per arm are several runs, `seed=1 model_dir=models/seed1` (checkpoint names do not
hold the seed, so give each seed its own model_dir).
Relative data paths resolve against `data_root` or $CELLEMNET_DATA_ROOT. Several GPUs:
`torchrun --nproc_per_node=N evaluation/finetune.py CONFIG`.
Interrupted (SIGTERM: the step finishes, the state is saved, exit 143; or killed): re-run with `resume=auto`.
"""
import argparse
import sys

from cellemnet.errors import cli_main
from cellemnet.evaluation.config import load_eval_config
from cellemnet.shipped import find_config


@cli_main
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="benchmark YAML (e.g. evaluation/benchmark_configs/lucchi_pp.yaml, or a "
                                       "shipped config by name: lucchi_pp.yaml)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of config keys")
    args = parser.parse_args(argv)

    config = load_eval_config(args.config, args.overrides, stage="train")
    from cellemnet.evaluation.train import finetune  # lazy: imports torch; --help stays fast

    out = finetune(config, config_path=str(find_config(args.config)))  # a shipped config's name is a file here
    if out["checkpoint"]:
        print(f"checkpoint: {out['checkpoint']}")
    return 143 if out["interrupted"] else 0  # stopped by SIGTERM: 128 + 15, as an unhandled SIGTERM would


if __name__ == "__main__":
    sys.exit(main())
