"""IoU as the original defines it, without its NaNs.

IoU(class c) = |pred == c AND truth == c| / |pred == c OR truth == c|.
When both are empty (union 0) the IoU is defined as 1.0: predicting nothing where there is nothing is
perfect. (The original got the same value from its (I + 1e-5) / (U + 1e-5) trick in 2D, and NaN in 3D.)

* Training/validation: per class over a whole batch (sums over batch and pixels), background included for
  multi-class, binary prediction = sigmoid > 0.5.
* 2D test: per image and per eval class; the test score is the mean over all (image, class) entries.
* 3D test: per volume and per eval class over the whole volume; per-volume mean over classes, then the mean
  over volumes.
* Instance matching (Perez benchmarks, whose truth labels only some objects): predicted connected components
  that touch no ground-truth component are dropped before scoring.

numpy only here (the training-batch IoU takes torch tensors and is in `batch_iou`).
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np


def iou_from_counts(intersection: float, union: float) -> float:
    """intersection / union, and 1.0 for an empty union (empty prediction vs empty truth)."""
    return 1.0 if union == 0 else float(intersection) / float(union)


def class_iou(pred: np.ndarray, truth: np.ndarray, cls: int) -> float:
    p = pred == cls
    t = truth == cls
    return iou_from_counts(np.logical_and(p, t).sum(), np.logical_or(p, t).sum())


def ious(pred: np.ndarray, truth: np.ndarray, classes: Iterable[int]) -> dict[int, float]:
    """IoU of each class in `classes` for one image or volume of integer labels."""
    if pred.shape != truth.shape:
        raise ValueError(f"prediction shape {pred.shape} != truth shape {truth.shape}")
    return {int(c): class_iou(pred, truth, int(c)) for c in classes}


def instance_match(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Keep the predicted connected components (full connectivity) that overlap a ground-truth component."""
    from skimage.measure import label

    components = label(pred > 0, connectivity=pred.ndim)
    touching = np.unique(components[(truth > 0) & (components > 0)])
    keep = np.isin(components, touching) & (components > 0)
    return np.where(keep, pred, 0).astype(pred.dtype)


def mean_of(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


def batch_iou(logits, target, num_classes: int) -> list[float]:
    """Per-class IoU over a whole batch, as the original's training metric (background included for C > 1).

    logits: (N, C, H, W); target: (N, 1, H, W) float 0/1 for binary, (N, H, W) long for multi-class.
    """
    import torch

    with torch.no_grad():
        if num_classes == 1:
            pred = (logits.sigmoid() > 0.5).reshape(-1)
            t = target.reshape(-1) > 0.5
            inter = (pred & t).sum().item()
            union = (pred | t).sum().item()
            return [iou_from_counts(inter, union)]
        pred = logits.argmax(1)
        out = []
        for c in range(num_classes):
            p, t = pred == c, target == c
            out.append(iou_from_counts((p & t).sum().item(), (p | t).sum().item()))
        return out


class AverageMeter:
    """Plain running mean."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.total, self.count = 0.0, 0

    def update(self, value: float, n: int = 1) -> None:
        self.total += float(value) * n
        self.count += n

    @property
    def value(self) -> float:
        return self.total / self.count if self.count else float("nan")


class EMAMeter:
    """Exponential moving average with bias correction (momentum 0.98, as the original's training meters)."""

    def __init__(self, momentum: float = 0.98) -> None:
        self.momentum = momentum
        self.reset()

    def reset(self) -> None:
        self.avg, self.steps = 0.0, 0

    def update(self, value: float) -> None:
        self.steps += 1
        self.avg = self.momentum * self.avg + (1 - self.momentum) * float(value)

    @property
    def value(self) -> float:
        if self.steps == 0:
            return float("nan")
        return self.avg / (1 - self.momentum**self.steps)
