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
"""
from __future__ import annotations

import difflib
import math
import os
from typing import Any, Mapping, Sequence

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
    try:
        return cls(**kwargs)
    except Exception as exc:  # pydantic ValidationError, TypeError: all mean bad arguments
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


def build_train_transforms(entries: Sequence[Mapping[str, Any]], norms: Mapping[str, Sequence[float]]):
    """Config augmentations, then padding to a multiple of 32 (so any crop size works), then Normalize."""
    import albumentations as A

    pad = A.PadIfNeeded(
        min_height=None, min_width=None, pad_height_divisor=32, pad_width_divisor=32,
        position="top_left", border_mode=REFLECT_101,
    )
    return A.Compose([*build_augmentations(entries), pad, normalize_transform(norms)])


def build_eval_transforms(norms: Mapping[str, Sequence[float]]):
    """Validation and test: Normalize only; the model wrapper pads to a multiple of 32 and crops back."""
    import albumentations as A

    return A.Compose([normalize_transform(norms)])
