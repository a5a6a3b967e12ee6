"""albumentations 2.x pipelines from 1.x-style YAML entries."""
from __future__ import annotations

import math

import numpy as np
import pytest

from cellemnet.errors import ConfigError
from cellemnet.evaluation.augment import (
    REFLECT_101, build_augmentations, build_eval_transforms, build_train_transforms, translate,
)


def test_random_resized_crop_height_width_become_size():
    (t,) = build_augmentations([{"aug": "RandomResizedCrop", "height": 48, "width": 40, "scale": [0.5, 1.0]}])
    assert tuple(t.size) == (48, 40)
    out = t(image=np.zeros((100, 90, 1), np.uint8), mask=np.zeros((100, 90), np.uint8))
    assert out["image"].shape[:2] == (48, 40) and out["mask"].shape == (48, 40)


def test_gauss_noise_var_limit_becomes_relative_std_range():
    name, kw = translate("GaussNoise", {"var_limit": [400, 1200]})[0]
    assert name == "GaussNoise"
    assert kw["std_range"] == pytest.approx((20 / 255, math.sqrt(1200) / 255))
    (t,) = build_augmentations([{"aug": "GaussNoise", "var_limit": [400, 1200], "p": 1.0}])
    noisy = t(image=np.full((64, 64, 1), 128, np.uint8))["image"].astype(float)
    assert 10 < noisy.std() < 45  # sigma 20-35 gray levels, as 1.x's var_limit meant


def test_rotate_value_and_border_translated():
    (t,) = build_augmentations([{"aug": "Rotate", "limit": 180, "value": 7, "mask_value": 3}])
    assert t.fill == 7 and t.fill_mask == 3 and t.border_mode == REFLECT_101


def test_pad_keeps_1x_reflect_default_and_flip_split():
    pad, h, v = build_augmentations([{"aug": "PadIfNeeded", "min_height": 8, "min_width": 8}, {"aug": "Flip", "p": 0.3}])
    assert pad.border_mode == REFLECT_101
    assert type(h).__name__ == "HorizontalFlip" and type(v).__name__ == "VerticalFlip" and h.p == 0.3


def test_always_apply_becomes_p1_and_blur_limit_pair():
    (t,) = build_augmentations([{"aug": "GaussianBlur", "blur_limit": 7, "always_apply": True}])
    assert t.p == 1.0 and tuple(t.blur_limit) == (3, 7)


@pytest.mark.parametrize("channels, mean, std", [(1, [0.5], [0.25]), (3, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
def test_normalize_for_one_or_three_channels(channels, mean, std):
    tf = build_eval_transforms({"mean": mean, "std": std})
    img = np.full((8, 8, channels), 255, np.uint8)
    out = tf(image=img, mask=np.zeros((8, 8), np.uint8))["image"]
    assert out.shape == (8, 8, channels)
    np.testing.assert_allclose(out[0, 0], (1.0 - np.array(mean)) / np.array(std), rtol=1e-5)


def test_train_pipeline_pads_any_size_to_multiple_of_32():
    tf = build_train_transforms([], {"mean": [0.5], "std": [0.2]})
    out = tf(image=np.zeros((70, 45, 1), np.uint8), mask=np.zeros((70, 45), np.uint8))
    assert out["image"].shape[:2] == (96, 64) and out["mask"].shape == (96, 64)


def test_unknown_transform_and_bad_arguments():
    with pytest.raises(ConfigError, match="did you mean 'VerticalFlip'"):
        build_augmentations([{"aug": "VerticalFlp"}])
    with pytest.raises(ConfigError, match="invalid arguments"):
        build_augmentations([{"aug": "RandomBrightnessContrast", "brightness_limit": "lots"}])
