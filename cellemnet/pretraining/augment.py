"""The paper's augmentations on one-channel uint8 tensors (torchvision.transforms.v2), per view or per crop.

Per view, in the reference's order: rotation by U(-180, 180) deg (p=0.5, nearest, zero fill) -> random resized
crop -> brightness/contrast jitter 0.4 (`color_jitter`; always; saturation/hue are no-ops on gray) -> Gaussian blur
sigma
U(0.1, 2) (p=0.5) -> horizontal and vertical flips -> [0, 1] floats -> Gaussian noise with variance
log-uniform in [1e-5, 1e-4] (p=0.5) -> normalisation with the EM norms.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torchvision.transforms import v2

BLUR_SIGMA = (0.1, 2.0)  # at the paper's 224 px crops; smaller crops scale the upper end (see view_transform)
PAPER_CROP = 224
NOISE_VAR = (1e-5, 1e-4)
COLOR_JITTER = 0.4  # the paper's brightness and contrast strength


class RandomGaussianNoise(torch.nn.Module):
    """With probability p add N(0, var) with var log-uniform in var_range, then clamp to [0, 1] (float input)."""

    def __init__(self, var_range: tuple[float, float] = NOISE_VAR, p: float = 0.5):
        super().__init__()
        self.log_lo, self.log_hi = math.log(var_range[0]), math.log(var_range[1])
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.rand(()) >= self.p:
            return x
        var = math.exp(self.log_lo + (self.log_hi - self.log_lo) * float(torch.rand(())))
        return (x + torch.randn_like(x) * math.sqrt(var)).clamp_(0.0, 1.0)


def blur_kernel_size(crop_size: int) -> int:
    """An odd kernel about a tenth of the crop, at least 3: covers +-2 sigma of the largest blur at 224 px."""
    k = max(3, int(0.1 * crop_size))
    return k if k % 2 else k + 1


class StandardizeView(torch.nn.Module):
    """(x - mean(x)) / std(x) per view: absolute brightness is not biology (it differs by instrument and session),
    and instance discrimination otherwise learns it first - the stem turns into a brightness detector."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - x.mean()) / x.std().clamp_min(1e-3)


def view_transform(crop_size: int, scale: tuple[float, float], mean: float, std: float,
                   standardize: bool = False, color_jitter: float = COLOR_JITTER) -> v2.Compose:
    """One view: (1, H, W) uint8 tensor -> (1, crop_size, crop_size) float32 normalised tensor.

    The blur's sigma range is the paper's at 224 px and shrinks with smaller crops, so a view loses the same share
    of its detail (sigma 2 px at a 64 px crop would blur away what a 224 px crop keeps). `color_jitter` is the
    brightness and contrast strength (0 leaves the step out)."""
    sigma = (BLUR_SIGMA[0], max(BLUR_SIGMA[0], BLUR_SIGMA[1] * min(1.0, crop_size / PAPER_CROP)))
    return v2.Compose(
        [
            v2.RandomApply([v2.RandomRotation(180, interpolation=v2.InterpolationMode.NEAREST, fill=0)], p=0.5),
            v2.RandomResizedCrop(crop_size, scale=tuple(scale), antialias=True),
            *([v2.ColorJitter(brightness=color_jitter, contrast=color_jitter)] if color_jitter > 0 else []),
            v2.RandomApply([v2.GaussianBlur(blur_kernel_size(crop_size), sigma=sigma)], p=0.5),
            v2.RandomHorizontalFlip(),
            v2.RandomVerticalFlip(),
            v2.ToDtype(torch.float32, scale=True),
            RandomGaussianNoise(),
            StandardizeView() if standardize else v2.Normalize(mean=[mean], std=[std]),
        ]
    )


class TwoViews:
    """MoCo: two independent views of one patch, returned as a (query, key) pair."""

    def __init__(self, crop_size: int, mean: float, std: float, scale: tuple[float, float] = (0.2, 1.0),
                 standardize: bool = False, color_jitter: float = COLOR_JITTER):
        self.transform = view_transform(crop_size, scale, mean, std, standardize, color_jitter)

    def __call__(self, patch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(patch), self.transform(patch)


class MultiCrop:
    """SwAV: nmb_crops[i] crops of size_crops[i] with scale (min_scale_crops[i], max_scale_crops[i]), as a list."""

    def __init__(self, nmb_crops: Sequence[int], size_crops: Sequence[int], min_scale_crops: Sequence[float],
                 max_scale_crops: Sequence[float], mean: float, std: float, standardize: bool = False,
                 color_jitter: float = COLOR_JITTER):
        self.transforms = []
        for n, size, lo, hi in zip(nmb_crops, size_crops, min_scale_crops, max_scale_crops):
            self.transforms.extend([view_transform(size, (lo, hi), mean, std, standardize, color_jitter)] * n)

    def __call__(self, patch: torch.Tensor) -> list[torch.Tensor]:
        return [t(patch) for t in self.transforms]
