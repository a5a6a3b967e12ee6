"""Patch features: noise-corrected band energies separate structure, noise and blur on known inputs."""
import numpy as np
import pytest

from cellemnet.dataset.features import (
    FEATURE_NAMES,
    INDEX,
    N_FEATURES,
    compute_features,
    noise_constants,
    patch_features,
)


def _texture(seed=0, size=224, noise=3.0):
    """Blobs and lines at several scales plus pixel noise: a stand-in for EM structure."""
    import cv2

    rng = np.random.default_rng(seed)
    field = cv2.GaussianBlur(rng.normal(0, 1, (size, size)).astype(np.float32), (0, 0), 5)
    img = 128 + 40 * field / field.std()
    img += rng.normal(0, noise, img.shape)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def test_shapes_and_names():
    feats = compute_features([_texture(0), _texture(1, size=100)])
    assert feats.shape == (2, N_FEATURES) == (2, len(FEATURE_NAMES))
    assert np.isfinite(feats).all()
    assert compute_features([]).shape == (0, N_FEATURES)


def test_threads_give_same_features():
    patches = [_texture(s) for s in range(4)]
    np.testing.assert_allclose(compute_features(patches, workers=2), compute_features(patches))


def test_noise_estimate_recovers_white_noise_sigma():
    rng = np.random.default_rng(3)
    for sigma in (5.0, 20.0):
        patch = np.clip(np.round(128 + rng.normal(0, sigma, (224, 224))), 0, 255).astype(np.uint8)
        f = patch_features(patch)
        assert f[INDEX["noise_sigma"]] == pytest.approx(sigma, rel=0.1)
        # white noise has no structure once its own mid/coarse energy is taken out
        assert f[INDEX["structure_snr"]] < 0.15
        assert f[INDEX["fine_mid_ratio"]] > 2.5


def test_structure_blur_saturation_and_uniformity_features_move_the_right_way():
    import cv2

    tex = _texture(5)
    blurred = cv2.GaussianBlur(tex, (0, 0), 4)
    flat = np.full((224, 224), 90, np.uint8)
    clipped = np.clip((tex.astype(int) - 128) * 6 + 128, 0, 255).astype(np.uint8)
    f_tex, f_blur, f_flat, f_clip = compute_features([tex, blurred, flat, clipped])
    assert f_tex[INDEX["structure_snr"]] > 3
    assert f_blur[INDEX["sharpness"]] < 0.2 < f_tex[INDEX["sharpness"]]
    assert f_blur[INDEX["laplacian_var"]] < f_tex[INDEX["laplacian_var"]] / 10
    assert f_flat[INDEX["uniform_fraction"]] == 1.0 and f_flat[INDEX["entropy"]] == 0.0
    assert f_flat[INDEX["structure"]] == 0.0
    assert f_clip[INDEX["saturated"]] > 0.5 > f_tex[INDEX["saturated"]]
    assert f_clip[INDEX["saturated"]] == pytest.approx(f_clip[INDEX["saturated_low"]] + f_clip[INDEX["saturated_high"]])
    assert f_tex[INDEX["edge_density"]] > f_flat[INDEX["edge_density"]]


def test_noise_constants_are_cached_and_plausible():
    c = noise_constants()
    assert c is noise_constants()
    assert 0.8 < c["fine"] < 0.95 and 0.1 < c["mid"] < 0.4


def test_rejects_non_uint8_or_non_2d():
    with pytest.raises(ValueError, match="uint8"):
        patch_features(np.zeros((8, 8), np.float32))
    with pytest.raises(ValueError, match="2D"):
        patch_features(np.zeros((2, 8, 8), np.uint8))
