"""Download the paper's benchmarks and convert them into the layout the evaluation reads.

    python evaluation/setup_benchmarks/setup_data.py --data-root DIR [DATASET_OR_BENCHMARK ...]

With no names, every benchmark is set up. The data root can also come from $CELLEMNET_DATA_ROOT. Downloads are
checked against known checksums (or the one recorded on first download); a dataset already set up is skipped, so
a rerun resumes. The tracked benchmark configs are never edited: they find the data through the data root. The
benchmarks, their files and converters are the modules of cellemnet/evaluation/benchmarks/.
"""
from __future__ import annotations

import argparse
import sys

from cellemnet.errors import cli_main
from cellemnet.evaluation import benchmarks
from cellemnet.evaluation.setup.layout import datasets_for, resolve_data_root
from cellemnet.evaluation.setup.pipeline import setup_datasets


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"benchmarks ({', '.join(benchmarks.BENCHMARKS)}) or datasets "
                             f"({', '.join(benchmarks.DATASETS)}); default all")
    parser.add_argument("--data-root", help="folder for all benchmark data (default: $CELLEMNET_DATA_ROOT)")
    parser.add_argument("--no-download", action="store_true",
                        help="use only files already in DATA_ROOT/downloads (checked against their checksums)")
    parser.add_argument("--download-only", action="store_true", help="fetch and check the files, do not convert")
    parser.add_argument("--force", action="store_true", help="convert again even where a dataset is set up")
    parser.add_argument("--delete-downloads", action="store_true", help="remove each archive after converting it")
    parser.add_argument("--list", action="store_true", help="print the files each dataset downloads and exit")
    return parser.parse_args(argv)


def source_lines(name: str) -> list[str]:
    """What --list prints for one dataset: each file with its checksum, or what it is built from."""
    dataset = benchmarks.dataset(name)
    lines = []
    for remote in dataset.sources:
        check = f"sha256 {remote.sha256}" if remote.sha256 else f"md5 {remote.md5}" if remote.md5 else \
            "checksum recorded on first download"
        lines.append(f"{name}: {remote.url} -> downloads/{remote.filename} ({check})")
    if dataset.needs and not dataset.sources:
        built_from = ", ".join(dataset.needs[:-1]) + " and " + dataset.needs[-1] if len(dataset.needs) > 1 \
            else dataset.needs[0]
        lines.append(f"{name}: built from {built_from} (no download)")
    return lines


@cli_main
def main(argv=None) -> int:
    args = parse_args(argv)
    names = datasets_for(args.names or list(benchmarks.BENCHMARKS))
    if args.list:
        for name in names:
            print("\n".join(source_lines(name)))
        return 0
    root = resolve_data_root(args.data_root)
    summary = setup_datasets(names, root, download=not args.no_download, force=args.force,
                             keep_downloads=not args.delete_downloads, convert_data=not args.download_only)
    print(f"\nsummary (data root {root}):")
    for name, info in summary.items():
        details = ", ".join(f"{k}: {v}" for k, v in info.items() if k != "status")
        print(f"  {name}: {info['status']}" + (f" ({details})" if details else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
