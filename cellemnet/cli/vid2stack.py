"""Turn videos (.mp4, .avi) into (t, y, x) 8-bit nrrd stacks for patchify3d.

Each stack is named after its video with "_video" added when the name does not already say "video"
(``cells.mp4`` -> ``cells_video.nrrd``), which tells patchify3d to cut xy frames only. Existing stacks are kept.
"""
from __future__ import annotations

import argparse
import sys
import time

from cellemnet.dataset.preprocess import list_files, run_each, video_to_stack
from cellemnet.errors import cli_main
from cellemnet.io import VIDEO_SUFFIXES


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("viddir", help="folder of videos (or one video)")
    p.add_argument("-o", "--outdir", default=None, help="where stacks go (default: beside each video)")
    p.add_argument("-p", "--processes", type=int, default=1, help="videos converted in parallel (default 1)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return p


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    started = time.perf_counter()
    videos = list_files(args.viddir, VIDEO_SUFFIXES)
    written, errors = run_each(video_to_stack, [(str(v), args.outdir) for v in videos], args.processes, "videos",
                               not args.quiet)
    for line in errors:
        print(f"error: {line}")
    made = sum(w is not None for w in written)
    print(f"vid2stack: {len(videos)} videos: {made} stacks written, {len(written) - made} already there, "
          f"{len(errors)} failed; {time.perf_counter() - started:.1f} s")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
