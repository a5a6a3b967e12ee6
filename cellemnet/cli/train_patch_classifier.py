"""Train the informative-patch filter from hand labels.

    python dataset/train_patch_classifier.py LABELS SAVEDIR [--method nn|features] [--epochs N]

LABELS is a CSV with columns image,label (label: good, bad or none; `none` rows are ignored), as written by
notebooks/labeling.ipynb; image is a file path (relative paths are relative to the CSV) or SHARD.h5::PATCH.
At least 64 patches must be labelled good/bad; 15% are held out for validation (fixed seed).
Writes the model (features: patch_filter_features.json; nn: patch_quality_classifier_nn.pth), a ROC curve PNG,
metrics.json (accuracy, AUC, confusion matrix, and the untrained default's figures on the same patches) and
confusion_matrix.csv. Use the model with classify_patches.py --weights.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cellemnet.dataset.quality import train_patch_classifier
from cellemnet.errors import ConfigError, cli_main


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("labels", metavar="LABELS", help="labels CSV (image,label)")
    p.add_argument("savedir", metavar="SAVEDIR", help="folder for the model, ROC curve and metrics")
    p.add_argument("--method", choices=("nn", "features"), default="features",
                   help="nn: ResNet34 (the paper's); features: random forest on patch features (default)")
    p.add_argument("--epochs", type=int, default=30, help="nn training epochs (default 30, as the paper)")
    p.add_argument("--batch-size", type=int, default=64, help="nn batch size (default 64)")
    p.add_argument("--device", default="auto", help="auto (GPU when present), cpu or cuda")
    p.add_argument("--track", action="store_true", help="log the run to MLflow (cellemnet.tracking)")
    p.add_argument("--tracking-dir", default=None, help="MLflow store folder (default ./mlflow_store)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p.parse_args(argv)


@cli_main
def main(argv=None) -> int:
    args = parse_args(argv)

    if args.epochs < 1:
        raise ConfigError("--epochs must be >= 1")
    m = train_patch_classifier(args.labels, args.savedir, method=args.method, epochs=args.epochs,
                               batch_size=args.batch_size, device=args.device, track=args.track,
                               tracking_dir=args.tracking_dir, progress=not args.no_progress)
    v, d = m["validation"], m["validation_default_rules"]
    auc = f"{v['auc']:.3f}" if v["auc"] is not None else "n/a"
    print(f"done: {m['method']} model -> {m['weights']}")
    print(f"validation ({v['n']} patches): accuracy {v['accuracy']:.3f}, AUC {auc}, "
          f"confusion [[TN, FP], [FN, TP]] = {v['confusion_matrix']}")
    print(f"untrained default rules on the same patches: accuracy {d['accuracy']:.3f}")
    print(f"metrics: {Path(args.savedir) / 'metrics.json'}; ROC curve: {m['roc_curve']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
