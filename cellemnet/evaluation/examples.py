"""Lay out public EM data as evaluation benchmarks (for tests, demos and the CPU benchmark run).

ISBI 2012 (ssTEM, Drosophila VNC): 30 labelled 512x512 slices where 255 = cell interior and 0 = membrane.
As a benchmark the target class is the membrane (mask = label == 0, stored 0/255), the first slices train,
the last ones test, and the slices also stack into a (z, y, x) test volume.

    python -m cellemnet.evaluation.examples isbi2012 ../shared/data/isbi2012 OUT [--n-test 6] [--crop 0]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from cellemnet.errors import InputError, cli_main
from cellemnet.io import read_image, write_image, write_volume


def _isbi_slices(src: Path) -> list[tuple[Path, Path]]:
    images = sorted((src / "train" / "images").glob("*.png"))
    if not images:
        raise InputError(f"{src / 'train' / 'images'}: no ISBI 2012 slices found")
    pairs = []
    for p in images:
        label = src / "train" / "labels" / p.name
        if not label.is_file():
            raise InputError(f"{p}: no label {label}")
        pairs.append((p, label))
    return pairs


def layout_isbi2012(src: str | Path, out: str | Path, n_test: int = 6, crop: int = 0, n_train: int | None = None,
                    volume_depth: int = 0) -> Path:
    """Write `out/{train,test}/{images,masks}` (membrane = 255) and, with volume_depth, `out/test3d/` holding
    the last `volume_depth` slices as one .nrrd volume (cropped to `crop` in y and x when crop > 0)."""
    src, out = Path(src), Path(out)
    pairs = _isbi_slices(src)
    train, test = pairs[: len(pairs) - n_test], pairs[len(pairs) - n_test :]
    if n_train is not None:
        train = train[:n_train]

    def load(p: Path, label: Path) -> tuple[np.ndarray, np.ndarray]:
        img, lab = read_image(p), read_image(label)
        if crop:
            img, lab = img[:crop, :crop], lab[:crop, :crop]
        return img, ((lab == 0) * 255).astype(np.uint8)

    for split, items in (("train", train), ("test", test)):
        for p, label in items:
            img, mask = load(p, label)
            write_image(out / split / "images" / p.name, img)
            write_image(out / split / "masks" / p.name, mask)
    if volume_depth:
        stack = [load(p, label) for p, label in pairs[-volume_depth:]]
        vol = np.stack([s[0] for s in stack])
        msk = (np.stack([s[1] for s in stack]) > 0).astype(np.uint8)
        write_volume(out / "test3d" / "images" / "isbi.nrrd", vol, spacing=(50.0, 4.0, 4.0))
        write_volume(out / "test3d" / "masks" / "isbi.nrrd", msk, spacing=(50.0, 4.0, 4.0))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="which", required=True)
    isbi = sub.add_parser("isbi2012", help="ISBI 2012 membranes as a 2D benchmark (+ optional 3D test volume)")
    isbi.add_argument("src")
    isbi.add_argument("out")
    isbi.add_argument("--n-test", type=int, default=6)
    isbi.add_argument("--crop", type=int, default=0)
    isbi.add_argument("--volume-depth", type=int, default=0)
    args = parser.parse_args(argv)
    out = layout_isbi2012(args.src, args.out, n_test=args.n_test, crop=args.crop, volume_depth=args.volume_depth)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(cli_main(main)())
