"""Draw the figures used in the README and the stage READMEs.

    python images/make_figures.py                 # every figure
    python images/make_figures.py --only pipeline # one figure

Each figure is one function registered with @figure("name"); it receives the output folder and returns the
path(s) it wrote. Add a figure by writing such a function below.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import numpy as np

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

IMAGES_DIR = Path(__file__).resolve().parent
FIGURES: dict[str, Callable[[Path], Path | list[Path]]] = {}

STAGE_COLOURS = {"curation": "#d8e8f6", "pretraining": "#fde5cc", "evaluation": "#dcefd9"}
FILE_COLOUR = "#f4f4f4"
EDGE = "#444444"


def figure(name: str) -> Callable:
    """Register a figure-drawing function under `name` (used by --only)."""

    def register(func: Callable[[Path], Path | list[Path]]) -> Callable[[Path], Path | list[Path]]:
        FIGURES[name] = func
        return func

    return register


# --------------------------------------------------------------------------------------------------------------
# drawing helpers
# --------------------------------------------------------------------------------------------------------------
def _box(ax, x: float, y: float, w: float, h: float, face: str, title: str, lines: list[str],
         subtitle: str = "", dashed: bool = False, title_size: float = 12.5) -> tuple[float, float, float, float]:
    patch = FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.12", facecolor=face,
                           edgecolor=EDGE, linewidth=1.4, linestyle="--" if dashed else "-")
    ax.add_patch(patch)
    top = y + h - 0.2
    ax.text(x + w / 2, top, title, ha="center", va="top", fontsize=title_size, fontweight="bold")
    if subtitle:
        ax.text(x + w / 2, top - 0.36, subtitle, ha="center", va="top", fontsize=9.5, family="monospace",
                color="#555555")
    body_top = top - (0.78 if subtitle else 0.45)
    for i, line in enumerate(lines):
        ax.text(x + 0.16, body_top - i * 0.34, line, ha="left", va="top", fontsize=9.5)
    return x, y, w, h


def _arrow(ax, start: tuple[float, float], end: tuple[float, float], dashed: bool = False) -> None:
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=16, linewidth=1.6, color=EDGE,
                                 linestyle="--" if dashed else "-", shrinkA=2, shrinkB=2))


def _right(box) -> tuple[float, float]:
    x, y, w, h = box
    return x + w, y + h / 2


def _left(box) -> tuple[float, float]:
    x, y, w, h = box
    return x, y + h / 2


def _bottom(box, frac: float = 0.5) -> tuple[float, float]:
    x, y, w, h = box
    return x + w * frac, y


def _top(box, frac: float = 0.5) -> tuple[float, float]:
    x, y, w, h = box
    return x + w * frac, y + h


# --------------------------------------------------------------------------------------------------------------
# figures
# --------------------------------------------------------------------------------------------------------------
@figure("pipeline")
def draw_pipeline(out_dir: Path) -> Path:
    """The three stages (curation -> pretraining -> evaluation), the files passed between them, the exported model
    package and predict."""
    fig, ax = plt.subplots(figsize=(23.0, 6.2))
    ax.set_xlim(0, 23.0)
    ax.set_ylim(0, 6.2)
    ax.axis("off")

    stage_y, stage_h = 2.55, 2.75
    file_y, file_h = 3.2, 1.45

    raw = _box(ax, 0.1, file_y - 0.25, 2.3, file_h + 0.5, FILE_COLOUR, "EM data",
               ["2D: tif png jpg bmp", "3D: nrrd nii mha tif", "     mrc h5 zarr", "video: mp4 avi"],
               title_size=11)
    curation = _box(ax, 2.9, stage_y, 3.0, stage_h, STAGE_COLOURS["curation"], "1  Curation", [
        "cut 224x224 patches", "  (2D images, 3D volumes)", "drop near-duplicates", "  (dHash + Hamming)",
        "drop uninformative patches"], subtitle="dataset/")
    store = _box(ax, 6.35, file_y, 2.05, file_h, FILE_COLOUR, "patch store",
                 ["HDF5 shards", "+ manifest CSV"], title_size=11)
    pretraining = _box(ax, 8.85, stage_y, 3.0, stage_h, STAGE_COLOURS["pretraining"], "2  Pretraining", [
        "self-supervised ResNet50", "MoCoV2 or SwAV", "GPU: DDP + mixed precision", "CPU: runs, slowly",
        "resumes from checkpoints"], subtitle="pretraining/")
    encoder = _box(ax, 12.3, file_y, 1.75, file_h, FILE_COLOUR, "encoder",
                   ["exported weights", "(.pth, 1 channel)"], title_size=11)
    evaluation = _box(ax, 14.45, stage_y, 2.45, stage_h, STAGE_COLOURS["evaluation"], "3  Evaluation", [
        "fine-tune a U-Net", "2D and 3D inference", "IoU on benchmarks", "random init vs", "  pretrained"],
        subtitle="evaluation/")

    package = _box(ax, 17.35, file_y - 0.25, 2.3, file_h + 0.5, FILE_COLOUR, "model package",
                   ["bioimage.io rdf.yaml", "PyTorch, TorchScript,", "  ONNX weights", "export_model.py"],
                   title_size=11)
    predict = _box(ax, 20.1, stage_y, 2.7, stage_h, STAGE_COLOURS["evaluation"], "4  Predict", [
        "your images, volumes", "  of any size", "block-wise, resumes", "OME-Zarr / TIFF /", "  NRRD / MRC out"],
        subtitle="evaluation/predict.py")

    for a, b in ((raw, curation), (curation, store), (store, pretraining), (pretraining, encoder),
                 (encoder, evaluation), (evaluation, package), (package, predict)):
        _arrow(ax, _right(a), _left(b))

    published = _box(ax, 11.7, 0.88, 2.65, 1.3, "white", "published weights",
                     ["CEM500K / CEM1.5M", "(local .pth files)"], dashed=True, title_size=10.5)
    _arrow(ax, _top(published, 0.55), _bottom(encoder, 0.5), dashed=True)
    benchmarks = _box(ax, 14.8, 0.88, 2.1, 1.3, "white", "benchmarks",
                      ["images + masks", "2D tif, 3D nrrd"], dashed=True, title_size=10.5)
    _arrow(ax, _top(benchmarks, 0.5), _bottom(evaluation, 0.571), dashed=True)
    own = _box(ax, 20.35, 0.88, 2.2, 1.3, "white", "your EM data",
               ["no masks needed", "h5 zarr tif mrc ..."], dashed=True, title_size=10.5)
    _arrow(ax, _top(own, 0.5), _bottom(predict, 0.5), dashed=True)
    tracking = FancyBboxPatch((2.9, 0.12), 14.0, 0.55, boxstyle="round,pad=0.02,rounding_size=0.12",
                              facecolor="#f7f7fb", edgecolor=EDGE, linewidth=1.2, linestyle="--")
    ax.add_patch(tracking)
    ax.text(9.9, 0.395, "MLflow tracking: configs (YAML), losses, IoU per benchmark, logged models, reports",
            ha="center", va="center", fontsize=10.5)
    _arrow(ax, _bottom(pretraining, 0.5), (10.35, 0.69), dashed=True)
    _arrow(ax, _bottom(evaluation, 0.1), (14.7, 0.69), dashed=True)

    ax.text(0.1, 6.05, "CellEMNet: curate EM data  \u2192  pretrain an encoder  \u2192  measure what it buys",
            fontsize=15, fontweight="bold", va="top")
    ax.text(0.1, 2.2, "solid: files passed\nbetween stages\n\ndashed: optional inputs\nand records",
            fontsize=9, color="#555555", va="top")

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "pipeline.png"
    fig.savefig(path, dpi=110, bbox_inches="tight", facecolor="white")
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------------------------
# curated-patch montage (notebooks helper's figure): what de-duplication and the filter keep and drop
# --------------------------------------------------------------------------------------------------------------
SHARED_DATA = IMAGES_DIR.parent.parent / "shared" / "data"


def _real_patch_pool(data: Path) -> list[tuple[str, "np.ndarray"]] | None:
    """(source, 224-px-or-smaller uint8 patch) from the real EM examples, or None when they are absent."""
    import numpy as np

    from cellemnet.io import read_image, read_volume, to_uint8

    tomogram, isbi = data / "cryoet" / "tomo.tif", data / "isbi2012" / "train" / "images"
    examples = data / "cem-examples" / "occlusion"
    if not (tomogram.is_file() and isbi.is_dir() and examples.is_dir()):
        return None
    pool = [("cryo-ET", section) for section in to_uint8(np.asarray(read_volume(tomogram)[0]))]
    for path in sorted(isbi.glob("*.png")):  # the four corner tiles of each 512-px ssTEM slice
        image = read_image(path)
        for y0 in (0, image.shape[0] - 224):
            for x0 in (0, image.shape[1] - 224):
                pool.append(("ssTEM", image[y0:y0 + 224, x0:x0 + 224]))
    pool += [("CEM500K", read_image(path)) for path in sorted(examples.glob("*.tif*"))]
    return pool


def _synthetic_patch_pool(seed: int = 0) -> list[tuple[str, "np.ndarray"]]:
    """Sections of small synthetic volumes, one per look (neighbouring sections are near-duplicates)."""
    from cellemnet.synthetic import LOOKS, make_volume

    pool = []
    for i, look in enumerate(LOOKS):
        volume, _ = make_volume((16, 160, 160), look=look, seed=seed + i)
        pool += [(look, section) for section in volume]
    return pool


def curated_patch_groups(pool, seed: int = 0, n_failures: int = 12) -> dict:
    """Run the curation library on a patch pool: dHash + greedy de-duplication, then the informative filter.

    A few patches are turned into typical acquisition failures (blank resin, noise, out of focus, clipped) with
    cellemnet.dataset.quality.spoil_patch, so the filter has something to drop. Returns the patches kept,
    (exemplar, duplicate) pairs removed as near-duplicates, the (patch, score) dropped as uninformative, and counts.
    """
    import numpy as np

    from cellemnet.constants import DEFAULT_MAX_HAMMING
    from cellemnet.dataset.dedup import greedy_clusters
    from cellemnet.dataset.hashing import dhash_batch
    from cellemnet.dataset.quality import UNINFORMATIVE_KINDS, make_scorer, spoil_patch

    rng = np.random.default_rng(seed)
    patches = [patch for _, patch in pool]
    for k, i in enumerate(rng.choice(len(patches), size=n_failures, replace=False)):
        patches[i] = spoil_patch(patches[i], UNINFORMATIVE_KINDS[k % len(UNINFORMATIVE_KINDS)], rng)
    clusters = greedy_clusters(dhash_batch(patches), max_distance=DEFAULT_MAX_HAMMING, seed=seed)
    exemplars = clusters.exemplars
    scorer = make_scorer()
    scores = scorer.score([patches[i] for i in exemplars])
    informative = scores > scorer.threshold
    removed = [i for i in range(len(patches)) if clusters.exemplar_of[i] != i]
    return {
        "kept": [patches[i] for i in exemplars[informative]],
        "duplicates": [(patches[clusters.exemplar_of[i]], patches[i]) for i in removed],
        "uninformative": [(patches[i], float(s)) for i, s in zip(exemplars[~informative], scores[~informative])],
        "counts": {"patches": len(patches), "exemplars": len(exemplars), "kept": int(informative.sum())},
    }


@figure("curated_patches")
def draw_curated_patches(out_dir: Path, data: Path | None = None, seed: int = 0, per_row: int = 10) -> Path:
    """Montage: patches kept by curation, near-duplicates removed (beside their exemplar), uninformative dropped.

    Uses the real EM examples in ../shared/data when present, else synthetic volumes.
    """
    import numpy as np

    pool = _real_patch_pool(data if data is not None else SHARED_DATA)
    source = "real EM: cryo-ET tomogram, ISBI 2012 ssTEM, CEM500K patches"
    if pool is None:
        pool, source = _synthetic_patch_pool(seed), "synthetic volumes (cellemnet.synthetic)"
    groups = curated_patch_groups(pool, seed=seed)
    rng = np.random.default_rng(seed)

    def pick(items, n):
        return [items[i] for i in sorted(rng.choice(len(items), size=min(n, len(items)), replace=False))]

    kept = pick(groups["kept"], per_row)
    pairs = pick(groups["duplicates"], per_row // 2)
    dropped = sorted(groups["uninformative"], key=lambda item: item[1])[:per_row]
    c = groups["counts"]
    rows = [("kept: distinct and informative", [(p, "") for p in kept]),
            ("removed as near-duplicates: exemplar | duplicate",
             [(p, t) for e, d in pairs for p, t in ((e, "exemplar"), (d, "duplicate"))]),
            ("dropped as uninformative (filter score)", [(p, f"p={s:.2f}") for p, s in dropped])]
    fig, axes = plt.subplots(len(rows), per_row, figsize=(per_row * 1.35, len(rows) * 1.75), squeeze=False)
    for r, (label, cells) in enumerate(rows):
        for col, ax in enumerate(axes[r]):
            ax.axis("off")
            if col < len(cells):
                patch, caption = cells[col]
                ax.imshow(patch, cmap="gray", vmin=0, vmax=255)
                if caption:
                    ax.set_title(caption, fontsize=7.5, pad=2)
        axes[r][0].text(0, 1.28, label, transform=axes[r][0].transAxes, fontsize=10, fontweight="bold")
    fig.suptitle(f"Curation: {c['patches']} patches \u2192 {c['exemplars']} after de-duplication \u2192 "
                 f"{c['kept']} informative\n{source}; a few failures planted for the filter", fontsize=11)
    fig.subplots_adjust(hspace=0.55, wspace=0.06, top=0.82)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "curated_patches.png"
    fig.savefig(path, dpi=110, bbox_inches="tight", facecolor="white")
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", choices=sorted(FIGURES),
                        help="draw only this figure (repeatable); default: all")
    parser.add_argument("--out-dir", type=Path, default=IMAGES_DIR, help="where to write (default: images/)")
    args = parser.parse_args(argv)
    for name in args.only or sorted(FIGURES):
        written = FIGURES[name](args.out_dir)
        for path in written if isinstance(written, list) else [written]:
            print(f"{name}: wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
