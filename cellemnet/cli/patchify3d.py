"""Cut 224x224 patches from 3D EM volumes on xy/xz/yz cross sections, drop near duplicates, one shard per volume.

Every volume in VOLDIR (nrrd, nii, mha, tif stacks, mrc, HDF5 ``file.h5:/key``, Zarr/OME-Zarr, videos; or VOLDIR
itself when it is one volume) becomes OUTDIR/<volume>.h5. Cross sections are cut every SPACING slices on the
requested axes (0 = xy, 1 = xz, 2 = yz); volumes whose z spacing differs from their x spacing by more than
25 %, and videos or files with 'video' in the name, are cut on xy only; cross sections shorter than half the
crop size are skipped. The volume is hashed in one streaming pass and only exemplars are cut and stored.
Patch names: ``{volume}-LOC-{axis}_{slice}_{y0}-{y1}_{x0}-{x1}``. Re-running skips complete shards.

A volume too big for one job (VOLDIR is then that one volume): `--z-range START:STOP` hashes only those slices
into OUTDIR/<volume>.zSTART-STOP.tiles (one job per range), and `--merge PART ...` de-duplicates the union of the
parts and writes OUTDIR/<volume>.h5: the same shard as one job. To split the cutting too, `--merge PART ...
--z-range START:STOP` cuts one range's kept patches (one job per range) and `--merge PART ... --cuts CUT ...`
writes the shard from them.
"""
from __future__ import annotations

import argparse
import sys
import time

from cellemnet.constants import DEFAULT_CROP_SIZE, DEFAULT_HASH_SIZE, DEFAULT_MAX_HAMMING
from cellemnet.errors import cli_main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("voldir", help="folder of volumes, or one volume (file, file.h5:/key, store.zarr[/key])")
    p.add_argument("outdir", help="folder for the shards (<volume>.h5) and manifest.csv")
    p.add_argument("-cs", "--crop-size", type=int, default=DEFAULT_CROP_SIZE, help="patch size (default %(default)s)")
    p.add_argument("-hs", "--hash-size", type=int, default=DEFAULT_HASH_SIZE,
                   help="dHash size; hash_size**2 bits (default %(default)s)")
    p.add_argument("-d", "--max-distance", type=int, default=DEFAULT_MAX_HAMMING,
                   help="patches within this Hamming distance of an exemplar are duplicates (default %(default)s)")
    p.add_argument("-a", "--axes", type=int, nargs="+", default=[0, 1, 2], choices=[0, 1, 2],
                   help="cross sections to cut: 0 = xy, 1 = xz, 2 = yz (default: 0 1 2)")
    p.add_argument("-s", "--spacing", type=int, default=1, help="cut every SPACING-th slice (default 1)")
    p.add_argument("-p", "--processes", type=int, default=1, help="volumes processed in parallel (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the de-duplication walk order (default 0)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.add_argument("--z-range", metavar="START:STOP", default=None,
                   help="one volume: hash only slices START..STOP-1 into OUTDIR/<volume>.zSTART-STOP.tiles; with "
                        "--merge: cut only that range's kept patches into OUTDIR/<volume>.zSTART-STOP.patches")
    p.add_argument("--merge", metavar="PART", nargs="+", default=None,
                   help="one volume: de-duplicate the .tiles parts of all its z ranges and write OUTDIR/<volume>.h5")
    p.add_argument("--cuts", metavar="CUT", nargs="+", default=None,
                   help="with --merge: take the kept patches from these .patches files instead of the volume")
    return p


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from cellemnet.dataset.patchify import (  # lazy: imports numba; --help stays fast
        PatchSettings,
        find_volumes,
        run_sources,
        run_split_step,
        summarize,
    )

    settings = PatchSettings(args.crop_size, args.hash_size, args.max_distance, args.seed, tuple(args.axes),
                             args.spacing)
    started = time.perf_counter()
    volumes = find_volumes(args.voldir, exclude=args.outdir)
    if not volumes:
        print(f"patchify3d: no volumes in {args.voldir}", file=sys.stderr)
        return 1
    if args.z_range is not None or args.merge is not None or args.cuts is not None:
        print(run_split_step(volumes, args.outdir, settings, args.z_range, args.merge, args.cuts,
                             progress=not args.quiet))
        return 0
    results = run_sources(volumes, args.outdir, settings, args.processes, progress=not args.quiet)
    text, code = summarize(results, "patchify3d", args.outdir, time.perf_counter() - started)
    print(text)
    return code


if __name__ == "__main__":
    sys.exit(main())
