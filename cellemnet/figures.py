"""Figures shared by the demo report, the evaluation outputs, images/make_figures.py and the notebooks (matplotlib,
Agg-safe).

Each figure function takes plain arrays/numbers, writes one PNG atomically and returns its path; `overlay_rgb`
returns the RGB array of a mask and/or prediction drawn on an image (`rgb_png` writes one pixel for pixel).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from cellemnet.errors import InputError
from cellemnet.io import atomic_path


def _figure_to_png(fig, path: str | os.PathLike) -> Path:
    import matplotlib.pyplot as plt

    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)
    return path


def _pyplot():
    import matplotlib

    if os.environ.get("MPLBACKEND") is None:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def montage(groups: Mapping[str, Sequence[np.ndarray]], path: str | os.PathLike, per_row: int = 8,
            title: str | None = None) -> Path:
    """One row block per group (e.g. 'kept', 'duplicate', 'uninformative') of gray patches."""
    plt = _pyplot()
    groups = {k: list(v)[:per_row] for k, v in groups.items() if len(v)}
    rows = max(1, len(groups))
    fig, axes = plt.subplots(rows, per_row, figsize=(per_row * 1.3, rows * 1.45), squeeze=False)
    for r, (label, patches) in enumerate(groups.items()):
        for c in range(per_row):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(patches):
                ax.imshow(patches[c], cmap="gray", vmin=0, vmax=255)
        axes[r][0].set_title(label, loc="left", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=11)
    return _figure_to_png(fig, path)


def loss_curve(steps: Sequence[float], losses: Sequence[float], path: str | os.PathLike,
               title: str = "Pretraining loss", xlabel: str = "iteration") -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    ax.plot(list(steps), list(losses), marker="o", ms=3, lw=1.2, color="#2b6cb0")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return _figure_to_png(fig, path)


def _finish_bars(fig, ax, x, groups, ylabel: str, title: str, path, rotate: float = 0) -> Path:
    """Axis labels, 0-1 range, legend and grid of an IoU bar chart; writes the PNG."""
    if rotate:  # long labels: slanted, anchored at their end under the group
        ax.set_xticks(x, groups, rotation=rotate, ha="right", fontsize=8)
    else:
        ax.set_xticks(x, groups)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    n_series = len(ax.get_legend_handles_labels()[1])
    # below the axes (and below slanted tick labels): inside, it covers the value labels of tall bars
    ax.legend(fontsize=8, frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.3 if rotate else -0.1),
              ncol=min(3, n_series))
    ax.grid(axis="y", alpha=0.3)
    return _figure_to_png(fig, path)


def grouped_bars(values: Mapping[str, Mapping[str, float]], path: str | os.PathLike, ylabel: str = "IoU",
                 title: str = "Test-set IoU", errors: Mapping[str, Mapping[str, float]] | None = None,
                 rotate: float = 0, series: Sequence[str] | None = None) -> Path:
    """values[group][series] -> bar height; groups on the x axis, one coloured bar per series.

    errors[group][series]: an error bar (e.g. the sd over seeds) on that bar, where given and finite. rotate: the
    x tick labels' angle in degrees (for long group names). series: the bars' order within a group (default: the
    series names sorted).
    """
    plt = _pyplot()
    groups = list(values)
    series = list(series) if series is not None else sorted({s for v in values.values() for s in v})
    errors = errors or {}
    width = 0.8 / max(1, len(series))
    fig, ax = plt.subplots(figsize=(max(4.0, 1.4 * len(groups) + 1.5), 3.4))
    x = np.arange(len(groups))
    for i, name in enumerate(series):
        heights = [values[g].get(name, np.nan) for g in groups]
        errs = [float(errors.get(g, {}).get(name, np.nan)) for g in groups]
        errs = [e if np.isfinite(e) and e > 0 else 0.0 for e in errs]  # none drawn for a single run (sd 0)
        bars = ax.bar(x + (i - (len(series) - 1) / 2) * width, heights, width, label=name, capsize=3,
                      yerr=[e or np.nan for e in errs] if any(errs) else None)
        for bar, h, e in zip(bars, heights, errs):
            if np.isfinite(h):  # above the bar and its error bar
                ax.text(bar.get_x() + bar.get_width() / 2, h + e + 0.01, f"{h:.2f}", ha="center", fontsize=8)
    return _finish_bars(fig, ax, x, groups, ylabel, title, path, rotate=rotate)


def _gray01(image: np.ndarray) -> np.ndarray:
    """float32 copy in 0..1: uint8 divided by 255, values already in 0..1 kept, anything else min-max rescaled."""
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    image = image.astype(np.float32)
    lo, hi = (float(image.min()), float(image.max())) if image.size else (0.0, 0.0)
    if lo >= 0.0 and hi <= 1.0:
        return image
    return (image - lo) / (hi - lo) if hi > lo else np.zeros_like(image)


def inner_edge(mask: np.ndarray) -> np.ndarray:
    """The pixels of a 2D mask (> 0) that touch the outside (4-neighbours, the image border counts as outside):
    its one-pixel inner outline, as `mask & ~scipy.ndimage.binary_erosion(mask)` gives."""
    inside = np.asarray(mask) > 0
    p = np.pad(inside, 1, constant_values=False)
    interior = p[1:-1, 1:-1] & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return inside & ~interior


def overlay_rgb(image: np.ndarray, mask: np.ndarray | None = None, prediction: np.ndarray | None = None, *,
                blend: float | None = None, outline: bool = False, mask_color: Sequence[float] = (0.0, 1.0, 0.0),
                prediction_color: Sequence[float] = (1.0, 0.0, 1.0)) -> np.ndarray:
    """RGB float32 (H, W, 3) in 0..1: a 2D gray image with a ground-truth `mask` and/or a `prediction` drawn on it.

    mask and prediction are bool or label arrays (> 0 is drawn); either may be None. The image may be uint8, or
    float in 0..1 (other values are min-max rescaled).
    - blend=None (default): the image dimmed to 70 %, each region brightened by 0.45 of its colour: ground truth
      green, prediction magenta, white where both agree.
    - blend=a: the image at full brightness, each region mixed with its colour: (1 - a) * gray + a * colour.
    - outline=True: the mask drawn as its one-pixel inner edge (`inner_edge`), solid in mask_color, over the
      prediction.
    """
    rgb = np.repeat(_gray01(image)[..., None], 3, axis=-1)
    if blend is None:
        rgb *= 0.7
    layers = []
    if prediction is not None:
        layers.append((np.asarray(prediction) > 0, prediction_color, False))
    if mask is not None:
        layers.append((inner_edge(mask) if outline else np.asarray(mask) > 0, mask_color, outline))
    for where, color, solid in layers:
        color = np.asarray(color, dtype=np.float32)
        if solid:
            rgb[where] = color
        elif blend is None:
            rgb[where] += 0.45 * color
        else:
            rgb[where] = (1 - blend) * rgb[where] + blend * color
    return np.clip(rgb, 0, 1)


def rgb_png(rgb: np.ndarray, path: str | os.PathLike) -> Path:
    """Write an RGB array (H, W, 3; uint8, or float in 0..1 as `overlay_rgb` returns) as a PNG, pixel for pixel."""
    import cv2

    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise InputError(f"{path}: an RGB image is (H, W, 3), got shape {rgb.shape}")
    if rgb.dtype != np.uint8:
        rgb = np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8)
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        if not cv2.imwrite(str(tmp), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
            raise InputError(f"{path}: could not write the PNG")
    return path


def overlays(rows: Sequence[tuple[str, np.ndarray, np.ndarray | None, Mapping[str, np.ndarray]]],
             path: str | os.PathLike) -> Path:
    """Each row: (label, image, ground-truth mask, {arm: prediction}); columns: image + one overlay per arm."""
    plt = _pyplot()
    arms = list(rows[0][3]) if rows else []
    cols = 1 + len(arms)
    fig, axes = plt.subplots(len(rows), cols, figsize=(2.6 * cols, 2.6 * len(rows)), squeeze=False)
    for r, (label, image, mask, preds) in enumerate(rows):
        axes[r][0].imshow(image, cmap="gray")
        axes[r][0].set_title(label, fontsize=8)
        for c, arm in enumerate(arms, start=1):
            axes[r][c].imshow(overlay_rgb(image, mask, preds[arm]))
            axes[r][c].set_title(arm, fontsize=8)
        for ax in axes[r]:
            ax.axis("off")
    fig.suptitle("green: ground truth, magenta: prediction, white: both", fontsize=9)
    return _figure_to_png(fig, path)


def bars_with_seeds(values: Mapping[str, Mapping[str, Sequence[float]]], path: str | os.PathLike,
                    ylabel: str = "IoU", title: str = "Test-set IoU over seeds") -> Path:
    """values[group][series] -> per-seed values; bar = mean, error bar = sd, dots = the seeds themselves."""
    plt = _pyplot()
    groups = list(values)
    series = list(dict.fromkeys(s for v in values.values() for s in v))
    width = 0.8 / max(1, len(series))
    fig, ax = plt.subplots(figsize=(max(4.0, 1.6 * len(groups) + 1.5), 3.4))
    x = np.arange(len(groups))
    for i, name in enumerate(series):
        pos = x + (i - (len(series) - 1) / 2) * width
        per_seed = [np.asarray(values[g].get(name, []), dtype=float) for g in groups]
        means = [v.mean() if v.size else np.nan for v in per_seed]
        sds = [v.std(ddof=1) if v.size > 1 else 0.0 for v in per_seed]
        ax.bar(pos, means, width, yerr=sds, capsize=3, label=name, alpha=0.85)
        for p, v, m, sd in zip(pos, per_seed, means, sds):
            ax.scatter(np.full(v.size, p), v, s=10, color="black", zorder=3)
            if np.isfinite(m):  # above the error bar and the highest seed
                top = max(m + sd, float(v.max()) if v.size else m)
                ax.text(p, min(top + 0.03, 1.0), f"{m:.2f}", ha="center", fontsize=8)
    return _finish_bars(fig, ax, x, groups, ylabel, title, path)


def health_curves(records: Sequence[Mapping[str, float]], path: str | os.PathLike,
                  title: str = "Pretraining health (fixed patches, eval mode)") -> Path:
    """Retrieval, similarity gap, embedding spread (and probe IoU where measured) against the epoch."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    epochs = [r["epoch"] for r in records]
    for key, label in (("retrieval", "retrieval (trunk)"), ("sim_gap", "similarity gap"), ("spread", "spread")):
        ax.plot(epochs, [r[key] for r in records], marker="o", ms=3, lw=1.2, label=label)
    probed = [(r["epoch"], r["probe_iou"]) for r in records if "probe_iou" in r]
    if probed:
        ax.plot(*zip(*probed), marker="s", ms=4, lw=1.2, label="probe IoU")
    ax.set_xlabel("epoch")
    ax.set_title(title)
    ax.legend(fontsize=8, frameon=False)
    ax.grid(alpha=0.3)
    return _figure_to_png(fig, path)
