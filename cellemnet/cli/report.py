"""Turn the MLflow fine-tuning runs into tables and a bar chart of test IoU by benchmark and arm, over seeds.

    python evaluation/report.py [--tracking-dir DIR] [--out images] [--experiment NAME ...] [--iters N]

Reads the local store (DIR/mlflow.db, default ./mlflow_store) or $MLFLOW_TRACKING_URI. An arm is a pretraining
with its finetune_layer, e.g. `cellemnet_mocov2 [none]` (frozen encoder) or `random_init [all]`. Writes
benchmark_iou.png, benchmark_iou.md (the table, then each arm minus random_init paired by seed),
benchmark_iou.csv (mean, sd and seed count per benchmark, arm and iterations), benchmark_iou_paired.csv and
benchmark_iou_runs.csv (one row per run) into the output folder.
"""
from __future__ import annotations

import argparse
import sys

from cellemnet.errors import cli_main
from cellemnet.evaluation.report import markdown_table, write_report


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tracking-dir", help="local MLflow store folder (default ./mlflow_store; "
                                               "MLFLOW_TRACKING_URI wins)")
    parser.add_argument("--out", default="images", help="output folder (default images/)")
    parser.add_argument("--experiment", action="append", help="only these MLflow experiments (benchmarks)")
    parser.add_argument("--iters", type=int, help="chart this iteration count (default: the longest per benchmark)")
    parser.add_argument("--chart-name", default="benchmark_iou.png", help="chart file name (default benchmark_iou.png)")
    return parser.parse_args(argv)


@cli_main
def main(argv=None) -> int:
    args = parse_args(argv)
    result = write_report(out_dir=args.out, tracking_dir=args.tracking_dir, experiments=args.experiment,
                          iters=args.iters, chart_name=args.chart_name)
    print(markdown_table(result["summary"], result["paired"]), end="")
    print(f"\n{result['scored']} scored runs of {result['runs']}; wrote:")
    for path in result["paths"].values():
        print(f"  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
