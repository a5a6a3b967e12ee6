"""Prediction: padding, tiling with blending, stack vs orthoplane, batching, spacing kept on save."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from cellemnet.evaluation.predict import Predictor, blend_window, overlapping_tile_starts


class Pointwise(nn.Module):
    """A per-pixel model: any tiling or slicing must reproduce its whole-input output exactly."""

    def forward(self, x):
        return 4.0 * x[:, :1] - 1.0


class Shape32(nn.Module):
    """Fails unless the input is a multiple of 32, like the U-Net."""

    def forward(self, x):
        assert x.shape[-1] % 32 == 0 and x.shape[-2] % 32 == 0
        return x[:, :1]


def _predictor(model, classes=1, channels=1):
    return Predictor(model, {"mean": [0.5] * channels, "std": [0.25] * channels}, channels, classes,
                     torch.device("cpu"))


def test_any_size_is_padded_and_cropped_back():
    p = _predictor(Shape32())
    img = (np.arange(50 * 37) % 255).astype(np.uint8).reshape(50, 37)
    out = p.predict_image(img)
    assert out.shape == (1, 50, 37)
    np.testing.assert_allclose(out[0], 1 / (1 + np.exp(-(img / 255 - 0.5) / 0.25)), atol=1e-6)


def test_tiled_equals_whole_for_a_pointwise_model():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (150, 97), dtype=np.uint8)
    p = _predictor(Pointwise())
    whole = p.predict_image(img, tile_size=0)
    tiled = p.predict_image(img, tile_size=64, overlap=16)
    np.testing.assert_allclose(tiled, whole, atol=1e-6)
    assert len(overlapping_tile_starts(150, 64, 16)) == 3 and overlapping_tile_starts(150, 64, 16)[-1] == 86
    assert blend_window(8, 8, 2).min() > 0


def test_tiled_unet_close_to_whole_and_exact_when_image_fits(tiny_unet):
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (80, 80), dtype=np.uint8)
    p = _predictor(tiny_unet, classes=2)
    whole = p.predict_image(img)
    np.testing.assert_array_equal(p.predict_image(img, tile_size=80, overlap=16), whole)  # fits: not tiled
    tiled = p.predict_image(img, tile_size=64, overlap=32)
    assert tiled.shape == whole.shape and np.abs(tiled - whole).mean() < 0.1


@pytest.fixture(scope="module")
def tiny_unet():
    import segmentation_models_pytorch as smp

    torch.manual_seed(0)
    return smp.Unet("resnet18", encoder_weights=None, in_channels=1, classes=2, encoder_depth=5).eval()


def test_orthoplane_is_mean_of_three_plane_stacks(tiny_unet):
    rng = np.random.default_rng(2)
    vol = rng.integers(0, 256, (6, 10, 12), dtype=np.uint8)
    p = _predictor(tiny_unet, classes=2)
    stack = p.predict_volume(vol, "stack", batch=64)
    ortho = p.predict_volume(vol, "orthoplane", batch=64, axes=(0, 1, 2))  # all three planes, thin as they are
    xz = p.predict_volume(np.ascontiguousarray(vol.transpose(1, 0, 2)), "stack").transpose(0, 2, 1, 3)
    yz = p.predict_volume(np.ascontiguousarray(vol.transpose(2, 0, 1)), "stack").transpose(0, 2, 3, 1)
    np.testing.assert_allclose(ortho, (stack + xz + yz) / 3, atol=1e-5)
    assert not np.allclose(ortho, stack, atol=1e-3)  # orthoplane really adds the other planes
    assert ortho.dtype == np.float32 and np.allclose(ortho.sum(0), 1, atol=1e-5)  # float probabilities, not uint8
    np.testing.assert_allclose(p.predict_volume(vol, "orthoplane", batch=1, axes=(0, 1, 2)), ortho, atol=1e-5)


def test_stack_equals_orthoplane_for_pointwise_model():
    vol = np.random.default_rng(3).integers(0, 256, (5, 9, 11), dtype=np.uint8)
    p = _predictor(Pointwise())
    np.testing.assert_allclose(p.predict_volume(vol, "stack"), p.predict_volume(vol, "orthoplane"), atol=1e-6)


def test_3d_predictions_keep_spacing_origin_direction(tmp_path, tiny_unet):
    import SimpleITK as sitk

    from cellemnet.evaluation.infer import evaluate_3d

    vol = np.random.default_rng(4).integers(0, 256, (4, 24, 24), dtype=np.uint8)
    img = sitk.GetImageFromArray(vol)
    img.SetSpacing((0.5, 0.7, 2.0))
    img.SetOrigin((1.0, 2.0, 3.0))
    img.SetDirection((0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    (tmp_path / "t" / "images").mkdir(parents=True)
    (tmp_path / "t" / "masks").mkdir()
    sitk.WriteImage(img, str(tmp_path / "t" / "images" / "v.nrrd"))
    mask = sitk.GetImageFromArray((vol > 128).astype(np.uint8))
    mask.CopyInformation(img)
    sitk.WriteImage(mask, str(tmp_path / "t" / "masks" / "v.nrrd"))
    p = _predictor(tiny_unet, classes=2)
    result = evaluate_3d(p, tmp_path / "t", tmp_path / "out", mode="orthoplane", eval_classes=[1], progress=False)
    out = sitk.ReadImage(str(tmp_path / "out" / "v.nrrd"))
    assert out.GetSpacing() == img.GetSpacing() and out.GetOrigin() == img.GetOrigin()
    assert out.GetDirection() == img.GetDirection() and out.GetSize() == img.GetSize()
    assert 0.0 <= result.mean_iou <= 1.0 and (tmp_path / "out" / "iou.csv").read_text().startswith("name,iou_class1")
    assert (tmp_path / "out" / "overlays" / "v_z2.png").is_file()
