"""Filter de-duplicated patch shards down to the final curated dataset.

    python dataset/classify_patches.py SHARDDIR SAVEDIR [--weights FILE_OR_URL] [--method nn|features]
        [--threshold 0.5] [--batch-size B] [-p WORKERS] [--format tiff|h5]

Scores every patch of every shard in SHARDDIR (as written by the curation commands) and keeps those scoring
above --threshold. tiff (default): SAVEDIR/{dataset}/{patch name}.tiff, 8-bit, every -ROI- shard of a dataset in
one folder; h5: SAVEDIR/{dataset}/{shard}.h5 patch shards. SAVEDIR/filter_manifest.csv lists every patch with
its score and decision. Re-running skips finished shards.

Methods: `features` (default without --weights; needs no weights; a trained JSON from
train_patch_classifier.py via --weights) or `nn` (the paper's ResNet34; --weights is the local
patch_quality_classifier_nn.pth from Zenodo record 6458015, or its URL when online).
"""
from __future__ import annotations

import argparse
import sys

from cellemnet.dataset.classify import classify_patches
from cellemnet.errors import cli_main


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sharddir", metavar="SHARDDIR", help="folder of patch shards (*.h5, searched recursively)")
    p.add_argument("savedir", metavar="SAVEDIR", help="folder for the final dataset")
    p.add_argument("--weights", default=None, help="features model JSON, or nn weights (.pth path or URL)")
    p.add_argument("--method", choices=("nn", "features"), default=None,
                   help="default: from --weights (.json -> features, .pth/URL -> nn); features without weights")
    p.add_argument("--threshold", type=float, default=0.5, help="keep patches scoring above this (default 0.5)")
    p.add_argument("--batch-size", type=int, default=128, help="patches scored per batch (default 128)")
    p.add_argument("-p", "--workers", type=int, default=4,
                   help="threads computing features and writing files (default 4)")
    p.add_argument("--format", choices=("tiff", "h5"), default="tiff", help="output format (default tiff)")
    p.add_argument("--device", default="auto", help="nn: auto (GPU when present), cpu or cuda")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p.parse_args(argv)


@cli_main
def main(argv=None) -> int:
    args = parse_args(argv)

    r = classify_patches(args.sharddir, args.savedir, weights=args.weights, method=args.method,
                         threshold=args.threshold, batch_size=args.batch_size, workers=args.workers,
                         fmt=args.format, device=args.device, progress=not args.no_progress)
    rate = r.scored_this_run / r.seconds if r.seconds > 0 else 0.0
    print(f"{r.n_shards} shards ({r.n_shards_skipped} already done, {r.n_shards_empty} empty), "
          f"{r.scored_this_run} patches scored in this run ({r.seconds:.1f} s, {rate:.0f} patches/s)")
    for dataset, c in sorted(r.per_dataset.items()):
        print(f"  {dataset}: kept {c['kept']} of {c['scored']}")
    pct = 100.0 * r.n_kept / r.n_patches if r.n_patches else 0.0
    print(f"kept {r.n_kept} of {r.n_patches} patches ({pct:.1f}%), dropped {r.n_dropped}; "
          f"output {args.savedir} ({args.format}); manifest {r.manifest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
