"""albumentations 2.x pipelines from 1.x-style YAML entries."""
from __future__ import annotations

import math

import numpy as np
import pytest

from cellemnet.errors import ConfigError
from cellemnet.evaluation.augment import (
    REFLECT_101,
    build_augmentations,
    build_eval_transforms,
    build_train_transforms,
    translate,
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
    pad, h, v = build_augmentations([{"aug": "PadIfNeeded", "min_height": 8, "min_width": 8},
                                     {"aug": "Flip", "p": 0.3}])
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


# ---------------------------------------------------------------------------------------------- scale check
def test_typical_zoom_of_random_resized_crop():
    from cellemnet.evaluation.augment import typical_zooms

    # the trap: 256 px from 768 x 1024 slices with scale (0.08, 1) shows objects ~2.3x smaller
    (step,) = typical_zooms([{"aug": "RandomResizedCrop", "height": 256, "width": 256, "scale": [0.08, 1.0]}],
                            (768, 1024))
    assert step["transform"] == "RandomResizedCrop" and step["zoom"] == pytest.approx(0.426, abs=0.005)
    assert step["native_scale"] == pytest.approx(256 * 256 / (768 * 1024))
    # a fixed scale s = crop area / image area is exactly native
    (native,) = typical_zooms([{"aug": "RandomResizedCrop", "size": [64, 64], "scale": [0.25, 0.25]}], (128, 128))
    assert native["zoom"] == pytest.approx(1.0)
    # a fixed-size crop first (with its probability) changes what the resized crop starts from
    mixed = typical_zooms([{"aug": "CropNonEmptyMaskIfExists", "height": 64, "width": 64, "p": 0.5},
                           {"aug": "RandomResizedCrop", "size": [64, 64], "scale": [0.25, 0.25]}], (128, 128))
    assert mixed[0]["zoom"] == pytest.approx(math.sqrt(2.0))  # half the time 2x (64 -> 16 px crops), else 1x
    assert typical_zooms([{"aug": "RandomCrop", "height": 64, "width": 64}, {"aug": "HorizontalFlip"}],
                         (768, 1024)) == []
    (resize,) = typical_zooms([{"aug": "Resize", "height": 384, "width": 512}], (768, 1024))
    assert resize["zoom"] == pytest.approx(0.5)


def test_scale_warning_names_key_transform_and_fix():
    from cellemnet.evaluation.augment import scale_warning

    bad = [{"aug": "RandomResizedCrop", "height": 256, "width": 256, "scale": [0.08, 1.0]}]
    message = scale_warning(bad, (768, 1024), source="lucchi.yaml")
    assert message.startswith("lucchi.yaml: key 'augmentations': RandomResizedCrop trains on objects 2.3x smaller")
    assert "RandomCrop" in message and "0.0833" in message and "\n" not in message
    assert scale_warning([{"aug": "RandomCrop", "height": 256, "width": 256}], (768, 1024)) is None
    # the fix the warning proposes is quiet
    assert scale_warning([{"aug": "RandomResizedCrop", "height": 256, "width": 256, "scale": [0.0417, 0.167]}],
                         (768, 1024)) is None
    zoom_in = [{"aug": "RandomResizedCrop", "height": 256, "width": 256, "scale": [0.05, 0.1]}]
    assert "larger" in scale_warning(zoom_in, (256, 256))


def _bench_with_images(root, hw):
    from eval_core_helpers import write_png

    rng = np.random.default_rng(0)
    for split in ("train",):
        image = rng.integers(0, 256, hw, dtype=np.uint8)
        write_png(root / split / "images" / "a.png", image)
        write_png(root / split / "masks" / "a.png", (image > 128).astype(np.uint8))
    return root


def test_loading_a_training_config_warns_once_on_stderr(tmp_path, capsys):
    from eval_core_helpers import tiny_config

    from cellemnet.evaluation.config import load_eval_config, training_scale_warning

    data = _bench_with_images(tmp_path / "d", (300, 400))
    bad = tiny_config(tmp_path / "bad.yaml", data, augmentations=[
        {"aug": "RandomResizedCrop", "height": 64, "width": 64, "scale": [0.08, 1.0]}, {"aug": "HorizontalFlip"}])
    cfg = load_eval_config(bad, stage="train")
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"WARNING: {bad}: key 'augmentations': RandomResizedCrop")
    assert "300x400" in err[0]
    assert training_scale_warning(cfg, str(bad)) == err[0][len("WARNING: "):]
    load_eval_config(bad, stage="none")  # only training is judged
    assert capsys.readouterr().err == ""
    good = tiny_config(tmp_path / "good.yaml", data, augmentations=[
        {"aug": "RandomCrop", "height": 64, "width": 64}, {"aug": "HorizontalFlip"}])
    load_eval_config(good, stage="train")
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("name,hw", [("example", (256, 256)), ("isbi2012", (512, 512))])
def test_shipped_small_configs_train_at_native_scale(name, hw):
    """The CPU configs' images: make_benchmark's default 256 x 256, ISBI 2012's 512 x 512 slices."""
    import yaml
    from eval_core_helpers import ROOT

    from cellemnet.evaluation.augment import scale_warning

    cfg = yaml.safe_load((ROOT / "evaluation" / "configs" / f"{name}.yaml").read_text())
    assert scale_warning(cfg["augmentations"], hw) is None
