"""Descriptive features of 8-bit EM patches, for the label-free informative-patch filter.

Each patch is split into three frequency bands with Gaussian filters: fine (pixel-scale, mostly noise),
mid and coarse (where membranes, organelles and texture live). Pure noise puts most of its energy in the
fine band; a heavily blurred patch has almost none there; blank resin has little energy in any band beyond
its noise. The band constants for unit white noise are measured once on a seeded noise field, so the
noise-corrected "structure" figures are exact for these discrete filters rather than textbook estimates.

No torch here: curation imports this module.
"""
from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Sequence

import cv2
import numpy as np

# Gaussian scales (pixels) separating the fine / mid / coarse bands.
FINE_SIGMA = 1.0
MID_SIGMA = 4.0
COARSE_SIGMA = 12.0
# A pixel is "near-uniform" when its smoothed neighbourhood varies by less than this many gray levels.
UNIFORM_LOCAL_STD = 1.5
UNIFORM_WINDOW = 7
# Pixel values counted as clipped at either end of the 8-bit range.
SATURATED_LOW = 1
SATURATED_HIGH = 254
# Std of the rounding error of an 8-bit image (uniform on [-0.5, 0.5]): the fine-band floor of a blurred patch.
QUANTIZATION_STD = 1.0 / np.sqrt(12.0)
# Edge pixels: gradient of the fine-smoothed patch above this many times its noise-only level.
EDGE_NOISE_FACTOR = 4.0
EDGE_MIN_GRADIENT = 2.0

FEATURE_NAMES: tuple[str, ...] = (
    "mean",              # mean gray level
    "std",               # global contrast
    "range_p1_p99",      # robust contrast
    "entropy",           # histogram entropy, bits
    "uniform_fraction",  # fraction of near-uniform pixels
    "laplacian_var",     # focus measure
    "saturated_low",     # fraction of pixels <= SATURATED_LOW
    "saturated_high",    # fraction of pixels >= SATURATED_HIGH
    "saturated",         # saturated_low + saturated_high
    "edge_density",      # fraction of pixels on a gradient clearly above noise
    "noise_sigma",       # robust per-pixel noise estimate, gray levels
    "energy_fine",       # std of the fine band
    "energy_mid",        # std of the mid band
    "energy_coarse",     # std of the coarse band
    "structure",         # noise-corrected mid+coarse std, gray levels
    "structure_snr",     # structure / noise
    "fine_mid_ratio",    # energy_fine / energy_mid: ~3-4 for white noise, ~0 for a blurred patch
    "sharpness",         # fine_mid_ratio with 8-bit rounding noise taken out of the fine band
)
N_FEATURES = len(FEATURE_NAMES)
INDEX = {name: i for i, name in enumerate(FEATURE_NAMES)}


def _blur(x: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(x, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT)


def _bands(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    g_fine = _blur(x, FINE_SIGMA)
    g_mid = _blur(x, MID_SIGMA)
    g_coarse = _blur(x, COARSE_SIGMA)
    return x - g_fine, g_fine - g_mid, g_mid - g_coarse, g_fine


def _gradient_magnitude(smoothed: np.ndarray) -> np.ndarray:
    gx = cv2.Sobel(smoothed, cv2.CV_32F, 1, 0, ksize=3, borderType=cv2.BORDER_REFLECT)
    gy = cv2.Sobel(smoothed, cv2.CV_32F, 0, 1, ksize=3, borderType=cv2.BORDER_REFLECT)
    return cv2.magnitude(gx, gy)


@functools.lru_cache(maxsize=1)
def noise_constants() -> dict[str, float]:
    """Band standard deviations, MAD ratio and gradient level of unit-variance white noise for these filters."""
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((512, 512)).astype(np.float32)
    fine, mid, coarse, g_fine = _bands(noise)
    inner = (slice(32, -32), slice(32, -32))  # away from the borders
    return {
        "fine": float(fine[inner].std()),
        "mid": float(mid[inner].std()),
        "coarse": float(coarse[inner].std()),
        "fine_mad": float(np.median(np.abs(fine[inner]))),
        "gradient": float(np.sqrt(np.mean(_gradient_magnitude(g_fine)[inner] ** 2))),
    }


def patch_features(patch: np.ndarray) -> np.ndarray:
    """The FEATURE_NAMES vector (float64) of one 2D uint8 patch."""
    if patch.ndim != 2:
        raise ValueError(f"expected a 2D patch, got shape {patch.shape}")
    if patch.dtype != np.uint8:
        raise ValueError(f"expected a uint8 patch, got {patch.dtype}")
    c = noise_constants()
    x = patch.astype(np.float32)
    n_pix = x.size
    out = np.empty(N_FEATURES, dtype=np.float64)

    hist = np.bincount(patch.ravel(), minlength=256).astype(np.float64)
    prob = hist[hist > 0] / n_pix
    cdf = np.cumsum(hist) / n_pix
    p1, p99 = np.searchsorted(cdf, 0.01), np.searchsorted(cdf, 0.99)

    fine, mid, coarse, g_fine = _bands(x)
    # Median absolute fine-band value is barely moved by edges, unlike its std.
    noise = float(np.median(np.abs(fine))) / c["fine_mad"]
    e_fine, e_mid, e_coarse = float(fine.std()), float(mid.std()), float(coarse.std())
    s_mid2 = max(e_mid**2 - (c["mid"] * noise) ** 2, 0.0)
    s_coarse2 = max(e_coarse**2 - (c["coarse"] * noise) ** 2, 0.0)
    structure = float(np.sqrt(s_mid2 + s_coarse2))

    local_mean = cv2.blur(g_fine, (UNIFORM_WINDOW, UNIFORM_WINDOW), borderType=cv2.BORDER_REFLECT)
    local_sq = cv2.blur(g_fine * g_fine, (UNIFORM_WINDOW, UNIFORM_WINDOW), borderType=cv2.BORDER_REFLECT)
    local_std = np.sqrt(np.maximum(local_sq - local_mean * local_mean, 0.0))

    grad = _gradient_magnitude(g_fine)
    edge_threshold = max(EDGE_NOISE_FACTOR * c["gradient"] * noise, EDGE_MIN_GRADIENT)

    out[INDEX["mean"]] = x.mean()
    out[INDEX["std"]] = x.std()
    out[INDEX["range_p1_p99"]] = float(p99 - p1)
    out[INDEX["entropy"]] = float(-(prob * np.log2(prob)).sum())
    out[INDEX["uniform_fraction"]] = float(np.count_nonzero(local_std < UNIFORM_LOCAL_STD)) / n_pix
    out[INDEX["laplacian_var"]] = float(cv2.Laplacian(x, cv2.CV_32F, ksize=3).var())
    out[INDEX["saturated_low"]] = hist[: SATURATED_LOW + 1].sum() / n_pix
    out[INDEX["saturated_high"]] = hist[SATURATED_HIGH:].sum() / n_pix
    out[INDEX["saturated"]] = out[INDEX["saturated_low"]] + out[INDEX["saturated_high"]]
    out[INDEX["edge_density"]] = float(np.count_nonzero(grad > edge_threshold)) / n_pix
    out[INDEX["noise_sigma"]] = noise
    out[INDEX["energy_fine"]] = e_fine
    out[INDEX["energy_mid"]] = e_mid
    out[INDEX["energy_coarse"]] = e_coarse
    out[INDEX["structure"]] = structure
    out[INDEX["structure_snr"]] = structure / max(noise, 0.5)
    out[INDEX["fine_mid_ratio"]] = e_fine / max(e_mid, 1e-3)
    e_fine_signal = np.sqrt(max(e_fine**2 - (c["fine"] * QUANTIZATION_STD) ** 2, 0.0))
    out[INDEX["sharpness"]] = e_fine_signal / max(e_mid, 1e-3)
    return out


def compute_features(patches: Iterable[np.ndarray] | np.ndarray, workers: int = 1) -> np.ndarray:
    """(N, N_FEATURES) float64 features of a list of 2D uint8 patches (or an (N, H, W) uint8 array).

    `workers` > 1 spreads patches over threads; OpenCV releases the GIL, so this scales with cores.
    """
    patches = list(patches) if not isinstance(patches, np.ndarray) else list(patches)
    if not patches:
        return np.zeros((0, N_FEATURES), dtype=np.float64)
    if workers > 1 and len(patches) > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            rows = list(pool.map(patch_features, patches))
    else:
        rows = [patch_features(p) for p in patches]
    return np.stack(rows)


def features_table(features: np.ndarray, names: Sequence[str] | None = None):
    """Features as a pandas DataFrame with one named column per feature (and the patch names as index)."""
    import pandas as pd

    return pd.DataFrame(features, columns=list(FEATURE_NAMES), index=list(names) if names is not None else None)
