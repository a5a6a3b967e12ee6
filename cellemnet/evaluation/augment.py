"""Albumentations 2.x pipelines built from the config's `augmentations` list.

Each entry is `{aug: Name, **kwargs}`. Any albumentations transform may be named. The original configs were
written for albumentations 1.x; the arguments that changed meaning or name are translated here so that the
same YAML gives the same augmentation:

* RandomResizedCrop / RandomCrop / CenterCrop... `height`, `width` -> `size=(h, w)` (RandomResizedCrop only)
* GaussNoise `var_limit` (variance in gray levels, e.g. (400, 1200)) -> `std_range` (std relative to 255);
  `mean` (gray levels) -> `mean_range`
* Rotate, PadIfNeeded, ...: `value` -> `fill`, `mask_value` -> `fill_mask`; 1.x's default border mode
  (reflect-101) is made explicit because 2.x changed it to a constant border
* GaussianBlur `blur_limit: n` -> (3, n), as 1.x read it
* Flip (removed in 2.x) -> HorizontalFlip + VerticalFlip with the same p
* `always_apply: true` (removed) -> p = 1

Normalize (mean/std for 1 or 3 channels, pixels divided by 255) always ends the pipeline.

Seeding. `Compose(seed=s)` alone is not enough: albumentations 2.0 gives every transform its own generator
seeded with the same s, so transforms with the same probability decide alike (HorizontalFlip and VerticalFlip
with p=0.5 flip together on every image). `seed_pipeline` gives the whole pipeline one shared stream instead, and
`SegmentationDataset` reseeds it for every image drawn from (seed, draw number), so a run's augmentation does not
depend on how many DataLoader workers there are or which one prepares which image.

Scale. `scale_warning` says when the training augmentation shows objects at a systematically different size
than inference does (inference sees test images at native scale).
"""
from __future__ import annotations

import difflib
import math
import os
import random
from typing import Any, Mapping, Sequence

import numpy as np

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations otherwise calls home on import

from cellemnet.errors import ConfigError

REFLECT_101 = 4  # cv2.BORDER_REFLECT_101, 1.x's default for geometric transforms and padding
# Transforms whose 1.x default border was reflect-101 (2.x: constant 0).
_BORDER_TRANSFORMS = {"Rotate", "PadIfNeeded", "ShiftScaleRotate", "Affine", "SafeRotate", "ElasticTransform"}


def _pair(value: Any) -> tuple[float, float]:
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise ConfigError(f"expected a number or a pair, got {value!r}")
        return float(value[0]), float(value[1])
    return 0.0, float(value)


def translate(name: str, kwargs: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """One 1.x-style entry -> the equivalent list of (2.x class name, kwargs)."""
    kw = dict(kwargs)
    if kw.pop("always_apply", False):
        kw["p"] = 1.0
    if "value" in kw:
        kw["fill"] = kw.pop("value")
    if "mask_value" in kw:
        kw["fill_mask"] = kw.pop("mask_value")
    if name == "Flip":
        p = kw.get("p", 0.5)
        return [("HorizontalFlip", {"p": p}), ("VerticalFlip", {"p": p})]
    if name == "RandomResizedCrop" and ("height" in kw or "width" in kw):
        if not ("height" in kw and "width" in kw):
            raise ConfigError("RandomResizedCrop needs both height and width (or size)")
        kw["size"] = (int(kw.pop("height")), int(kw.pop("width")))
    if name == "GaussNoise":
        if "var_limit" in kw:
            lo, hi = _pair(kw.pop("var_limit"))
            kw["std_range"] = (math.sqrt(lo) / 255.0, math.sqrt(hi) / 255.0)
        if "mean" in kw:
            m = float(kw.pop("mean")) / 255.0
            kw["mean_range"] = (m, m)
    if name == "GaussianBlur" and isinstance(kw.get("blur_limit"), int):
        kw["blur_limit"] = (3, kw["blur_limit"])
    if name in _BORDER_TRANSFORMS:
        kw.setdefault("border_mode", REFLECT_101)
    return [(name, kw)]


def _make(name: str, kwargs: dict[str, Any]):
    import albumentations as A

    cls = getattr(A, name, None)
    if cls is None or not isinstance(cls, type) or not issubclass(cls, A.BasicTransform):
        names = [n for n in dir(A) if isinstance(getattr(A, n), type)]
        close = difflib.get_close_matches(name, names, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"'{name}' is not an albumentations transform{hint}")
    import inspect
    import warnings

    accepted = set()
    for klass in cls.__mro__:  # albumentations passes **kwargs up to BasicTransform (p, ...)
        init = klass.__dict__.get("__init__")
        if init is not None:
            accepted |= {n for n, prm in inspect.signature(init).parameters.items()
                         if n != "self" and prm.kind not in (prm.VAR_KEYWORD, prm.VAR_POSITIONAL)}
    unknown = [k for k in kwargs if k not in accepted]
    if unknown:
        # albumentations only warns about unknown arguments and drops them: a misspelling would silently train
        # with the default instead
        hints = [f"'{k}'" + (f" (did you mean '{c[0]}'?)" if (c := difflib.get_close_matches(k, accepted, n=1))
                             else "") for k in unknown]
        raise ConfigError(f"{name}: unknown argument(s) {', '.join(hints)}; it takes {', '.join(sorted(accepted))}")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message=".*are not valid for transform.*")
            return cls(**kwargs)
    except Exception as exc:  # pydantic ValidationError, TypeError, the warning above: all mean bad arguments
        first = str(exc).strip().splitlines()
        raise ConfigError(f"{name}({kwargs}): invalid arguments: {' '.join(first[:3])[:300]}") from None


def build_augmentations(entries: Sequence[Mapping[str, Any]]) -> list:
    """The config's list -> albumentations transform objects, in order."""
    out = []
    for entry in entries:
        entry = dict(entry)
        name = entry.pop("aug")
        for cls_name, kw in translate(str(name), entry):
            out.append(_make(cls_name, kw))
    return out


def normalize_transform(norms: Mapping[str, Sequence[float]]):
    import albumentations as A

    return A.Normalize(mean=tuple(norms["mean"]), std=tuple(norms["std"]), max_pixel_value=255.0)


def build_train_transforms(entries: Sequence[Mapping[str, Any]], norms: Mapping[str, Sequence[float]],
                           seed: int | None = None):
    """Config augmentations, then padding to a multiple of 32 (so any crop size works), then Normalize.

    seed: one shared random stream for the whole pipeline (see the module doc); None: albumentations' own
    unseeded state.
    """
    import albumentations as A

    pad = A.PadIfNeeded(
        min_height=None, min_width=None, pad_height_divisor=32, pad_width_divisor=32,
        position="top_left", border_mode=REFLECT_101,
    )
    pipeline = A.Compose([*build_augmentations(entries), pad, normalize_transform(norms)])
    if seed is not None:
        seed_pipeline(pipeline, (seed,))
    return pipeline


def random_state(words: Sequence[int]) -> tuple[np.random.Generator, random.Random]:
    """A numpy and a Python generator, both from the integers `words` (e.g. (seed, draw)); distinct words give
    independent streams (numpy SeedSequence)."""
    sequence = np.random.SeedSequence([int(w) % 2**32 for w in words])
    numpy_rng = np.random.default_rng(sequence)
    python_rng = random.Random(int(sequence.generate_state(2, np.uint64)[1]))
    return numpy_rng, python_rng


def seed_pipeline(pipeline, words: Sequence[int]) -> None:
    """Give every transform of an albumentations Compose the same (shared) stream made from `words`."""
    pipeline.set_random_state(*random_state(words))


def build_eval_transforms(norms: Mapping[str, Sequence[float]]):
    """Validation and test: Normalize only; the model wrapper pads to a multiple of 32 and crops back."""
    import albumentations as A

    return A.Compose([normalize_transform(norms)])


# ---------------------------------------------------------------------------------------------- scale check
SCALE_TOLERANCE = 1.5  # typical zoom beyond this factor (either way) is "systematically another scale"
_SIZE_CROPS = {"RandomCrop", "CenterCrop", "CropNonEmptyMaskIfExists", "RandomCropNearBBox", "AtLeastOneBBoxRandomCrop"}


def _size_of(kw: Mapping[str, Any]) -> tuple[int, int] | None:
    if "size" in kw:
        h, w = kw["size"]
        return int(h), int(w)
    if "height" in kw and "width" in kw:
        return int(kw["height"]), int(kw["width"])
    return None


def _log_zoom_rrc(out_hw: tuple[int, int], in_hw: tuple[int, int], scale: Sequence[float]) -> float:
    """E[log zoom] of RandomResizedCrop: a crop of area s * (input area), s uniform in `scale`, resized to out_hw.

    Linear zoom = sqrt(out area / (s * input area)); E[log s] for s ~ U(a, b) = (b ln b - a ln a) / (b - a) - 1.
    """
    a, b = float(scale[0]), float(scale[1])
    if not 0 < a <= b:
        return 0.0
    mean_log_s = math.log(a) if math.isclose(a, b) else (b * math.log(b) - a * math.log(a)) / (b - a) - 1.0
    ratio = (out_hw[0] * out_hw[1]) / (in_hw[0] * in_hw[1])
    return 0.5 * (math.log(ratio) - mean_log_s)


def typical_zooms(entries: Sequence[Mapping[str, Any]], image_hw: tuple[int, int]) -> list[dict[str, Any]]:
    """The scale-changing steps of the pipeline for a training image of image_hw, in order, each counted on its own:
    {"transform": name, "zoom": typical linear zoom, "native_scale": the RandomResizedCrop `scale` (crop area /
    input area) that keeps the native scale, else None}.

    Typical = geometric mean over the transform's random draws: 2.0 shows objects twice as large as the image
    does (inference shows them at 1.0), 0.5 half as large. The image size is followed through the pipeline
    (padding, fixed-size crops with their probability p), so `CropNonEmptyMaskIfExists(512, p=0.8)` before a
    RandomResizedCrop counts as a 512 input 80 % of the time. Counted: RandomResizedCrop (scale range, crop
    size), Resize, RandomScale (scale_limit).
    """
    sizes: list[tuple[float, tuple[int, int]]] = [(1.0, (int(image_hw[0]), int(image_hw[1])))]
    out: list[dict[str, Any]] = []

    def resized_to(size: tuple[int, int], p: float) -> list[tuple[float, tuple[int, int]]]:
        return [(q * p, size) for q, _ in sizes] + [(q * (1 - p), hw) for q, hw in sizes if p < 1]

    for entry in entries:
        entry = dict(entry)
        for name, kw in translate(str(entry.pop("aug")), entry):
            p = float(kw.get("p", 1.0))
            size = _size_of(kw)
            if name == "PadIfNeeded":
                lo_h, lo_w = kw.get("min_height") or 0, kw.get("min_width") or 0
                sizes = [(q, (max(h, lo_h), max(w, lo_w))) for q, (h, w) in sizes]
            elif name in _SIZE_CROPS and size:
                sizes = resized_to(size, p)
            elif name == "RandomResizedCrop" and size:
                log_zoom = sum(q * _log_zoom_rrc(size, hw, kw.get("scale", (0.08, 1.0))) for q, hw in sizes)
                mean_log_area = sum(q * math.log(hw[0] * hw[1]) for q, hw in sizes)
                native = size[0] * size[1] / math.exp(mean_log_area)
                out.append({"transform": name, "zoom": math.exp(p * log_zoom), "native_scale": min(native, 1.0)})
                sizes = resized_to(size, p)
            elif name == "Resize" and size:
                log_zoom = sum(q * 0.5 * math.log(size[0] * size[1] / (hw[0] * hw[1])) for q, hw in sizes)
                out.append({"transform": name, "zoom": math.exp(p * log_zoom), "native_scale": None})
                sizes = resized_to(size, p)
            elif name == "RandomScale":
                limit = kw.get("scale_limit", 0.1)  # albumentations: a number v means (1 - v, 1 + v)
                lo, hi = (1 + limit[0], 1 + limit[1]) if isinstance(limit, (list, tuple)) else (1 - limit, 1 + limit)
                lo, hi = max(float(lo), 1e-6), max(float(hi), 1e-6)
                mean_log = math.log(lo) if math.isclose(lo, hi) else (
                    (hi * math.log(hi) - lo * math.log(lo)) / (hi - lo) - 1.0)
                out.append({"transform": name, "zoom": math.exp(p * mean_log), "native_scale": None})
    return out


def scale_warning(entries: Sequence[Mapping[str, Any]], image_hw: tuple[int, int], source: str = "config",
                  tolerance: float = SCALE_TOLERANCE) -> str | None:
    """One line when a transform typically zooms training images by more than `tolerance` (either way), else None."""
    for step in typical_zooms(entries, image_hw):
        zoom = step["zoom"]
        if 1 / tolerance <= zoom <= tolerance:
            continue
        h, w = image_hw
        size = f"{1 / zoom:.1f}x smaller" if zoom < 1 else f"{zoom:.1f}x larger"
        fix = "use RandomCrop (native scale)"
        native = step["native_scale"]
        if native is not None:
            fix += (f" or a scale range around crop area / image area = {native:.3g}, "
                    f"e.g. scale: [{native / 2:.3g}, {min(2 * native, 1.0):.3g}]")
        return (f"{source}: key 'augmentations': {step['transform']} trains on objects {size} than inference shows "
                f"them (typical zoom {zoom:.2f} on the {h}x{w} training images); {fix}")
    return None
