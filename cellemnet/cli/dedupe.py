"""De-duplicate patch shards against each other (across datasets), after the per-source pass.

Walks the kept patches of every shard under SHARDDIR (sub-folders included): shards processed by an earlier
run come first, new shards follow in a seeded random order; a patch within Hamming distance D of an earlier
kept patch is dropped from its shard (rewritten atomically) and its row in manifest.csv names the patch it
duplicates (``SHARD:NAME`` when that one is in another shard). Adding shards later and re-running compares only
the new patches with what was kept. State: SHARDDIR/crossdedup.json.
"""
from __future__ import annotations

import argparse
import sys
import time

from cellemnet.constants import DEFAULT_MAX_HAMMING
from cellemnet.errors import cli_main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sharddir", help="folder of patch shards (*.h5) written by patchify2d/patchify3d")
    p.add_argument("-d", "--max-distance", type=int, default=DEFAULT_MAX_HAMMING,
                   help="patches within this Hamming distance of a kept patch are dropped (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the walk order over new patches (default 0)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    return p


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from cellemnet.dataset.crossdedup import cross_deduplicate  # lazy: imports numba; --help stays fast

    started = time.perf_counter()
    report = cross_deduplicate(args.sharddir, args.max_distance, args.seed, progress=not args.quiet)
    for line in report.errors:
        print(f"error: {line}")
    resumed = " (finished an interrupted run first)" if report.resumed else ""
    if report.new_shards == 0:
        print(f"dedupe: {report.shards} shards, nothing new since the last run{resumed}; "
              f"{time.perf_counter() - started:.1f} s")
    else:
        print(f"dedupe: {report.shards} shards ({report.new_shards} new){resumed}; {report.patches_compared} patches "
              f"compared, {report.dropped} dropped as duplicates across shards, {len(report.rewritten)} shards "
              f"rewritten; {time.perf_counter() - started:.1f} s")
    return 1 if report.errors else 0


if __name__ == "__main__":
    sys.exit(main())
