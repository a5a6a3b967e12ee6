"""cellemnet.analysis: the pieces behind the analysis notebooks (tiny inputs, random-init encoders)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from scipy.stats import pointbiserialr

from cellemnet import analysis
from cellemnet.constants import EM_MEAN, EM_STD

NORMS = [EM_MEAN, EM_STD]


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """Tiny inputs: one thread is faster than two on a busy 2-core machine (and leaves a core to others)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def encoder():
    return analysis.resnet50_encoder(1, seed=0)


def test_import_does_not_pull_in_torch(root):
    code = "import sys, cellemnet.analysis; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_point_biserial_matches_scipy_and_handles_constants():
    rng = np.random.default_rng(0)
    mask = rng.random((12, 10)) > 0.6
    feats = rng.normal(size=(3, 12, 10)).astype(np.float32)
    feats[1] = mask * 2.0 + 1.0  # perfectly correlated
    feats[2] = 5.0  # no variance
    r = analysis.point_biserial(feats, mask)
    expected0 = pointbiserialr(mask.ravel(), feats[0].ravel()).statistic
    assert r[0] == pytest.approx(expected0, abs=1e-5)
    assert r[1] == pytest.approx(1.0, abs=1e-6)
    assert r[2] == 0.0
    assert np.all(analysis.point_biserial(feats, np.zeros_like(mask)) == 0.0)


def test_top_filters_map_uses_the_best_correlated_channels():
    mask = np.zeros((8, 8), bool)
    mask[2:5, 2:5] = True
    feats = np.stack([mask * 1.0, mask * -1.0, np.ones((8, 8))]).astype(np.float32)
    r = analysis.point_biserial(feats, mask)
    resp = analysis.top_filters_map(feats, r, k=1)
    assert resp.min() == 0.0 and resp.max() == 1.0
    assert np.array_equal(resp >= 0.3, mask)


def test_binary_iou():
    a = np.array([1, 1, 0, 0], bool)
    b = np.array([1, 0, 1, 0], bool)
    assert analysis.binary_iou(a, b) == pytest.approx(1 / 3)
    assert analysis.binary_iou(np.zeros(4, bool), np.zeros(4, bool)) == 1.0
    assert analysis.binary_iou(a, ~a) == 0.0


def test_to_batch_normalises_uint8_and_repeats_for_three_channel_norms():
    img = np.full((4, 6), 255, np.uint8)
    one = analysis.to_batch([img], NORMS)
    assert tuple(one.shape) == (1, 1, 4, 6)
    assert float(one[0, 0, 0, 0]) == pytest.approx((1.0 - EM_MEAN) / EM_STD, rel=1e-5)
    three = analysis.to_batch([img, img], [[0.5, 0.5, 0.5], [0.25, 0.25, 0.25]])
    assert tuple(three.shape) == (2, 3, 4, 6)
    assert float(three.max()) == pytest.approx(2.0)


@pytest.mark.parametrize("stride,side", [(32, 2), (16, 4), (8, 8), (4, 16)])
def test_set_output_stride_changes_layer4_resolution(encoder, stride, side):
    import copy

    model = analysis.set_output_stride(copy.deepcopy(encoder), stride)
    maps = analysis.forward_to(model, analysis.to_batch([np.zeros((64, 64), np.uint8)], NORMS), "layer4")
    assert tuple(maps.shape) == (1, 2048, side, side)


def test_set_output_stride_rejects_unknown(encoder):
    with pytest.raises(ValueError, match="output_stride"):
        analysis.set_output_stride(encoder, 2)


def test_feature_maps_and_mask_agreement_shapes(encoder):
    rng = np.random.default_rng(1)
    img = rng.integers(0, 255, (40, 56), dtype=np.uint8)
    mask = np.zeros((40, 56), bool)
    mask[10:30, 10:30] = True
    maps = analysis.feature_maps(encoder, img, NORMS, "layer2")
    assert maps.shape == (512, 40, 56)
    agree = analysis.mask_agreement(encoder, img, mask, NORMS, k=4, layer="layer2")
    assert agree.response.shape == (40, 56)
    assert agree.correlations.shape == (512,)
    assert -1.0 <= agree.r_pb <= 1.0 and 0.0 <= agree.iou <= 1.0


def test_embed_groups_mixed_sizes_in_input_order(encoder):
    rng = np.random.default_rng(2)
    a, b = rng.random((32, 32), dtype=np.float32), rng.random((48, 40), dtype=np.float32)
    together = analysis.embed(encoder, [a, b, a], NORMS)
    assert together.shape == (3, 2048)
    np.testing.assert_allclose(together[0], together[2], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(together[1], analysis.embed(encoder, [b], NORMS)[0], rtol=1e-4, atol=1e-5)


def test_load_encoder_random_is_seeded_and_file_round_trips(tmp_path, encoder):
    import torch

    model, norms, what = analysis.load_encoder(None, seed=0)
    assert "random" in what and norms == NORMS
    x = analysis.to_batch([np.full((32, 32), 100, np.uint8)], NORMS)
    with torch.inference_mode():
        np.testing.assert_allclose(model(x).numpy(), encoder(x).numpy(), rtol=1e-5, atol=1e-6)
    path = tmp_path / "enc.pth"
    torch.save({"state_dict": encoder.state_dict(), "norms": [0.5, 0.2], "method": "mocov2", "in_channels": 1}, path)
    loaded, norms, what = analysis.load_encoder(path)
    assert norms == [0.5, 0.2] and "mocov2" in what and "enc.pth" in what
    with torch.inference_mode():
        np.testing.assert_allclose(loaded(x).numpy(), encoder(x).numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(analysis.PERTURBATIONS))
def test_reference_strength_leaves_the_image_unchanged(name):
    p = analysis.PERTURBATIONS[name]
    img = np.random.default_rng(3).random((24, 24)).astype(np.float32) * 0.5 + 0.25
    out = p.apply(img, p.reference, np.random.default_rng(0))
    assert out.shape == img.shape
    np.testing.assert_allclose(out, img, atol=1e-5)
    assert p.reference in p.strengths
    other = p.strengths[1] if p.strengths[0] == p.reference else p.strengths[0]
    changed = p.apply(img, other, np.random.default_rng(0))
    assert not (changed.shape == img.shape and np.allclose(changed, img, atol=1e-3))


def test_cosine_to_reference_and_perturbed_responses(encoder):
    rng = np.random.default_rng(4)
    imgs = [rng.integers(0, 255, (32, 32), dtype=np.uint8) for _ in range(2)]
    p = analysis.PERTURBATIONS["blur"]
    resp = analysis.perturbed_responses(encoder, imgs, NORMS, p, strengths=[0.0, 3.0])
    assert resp.shape == (2, 2, 2048)
    sim = analysis.cosine_to_reference(resp, resp[0])
    np.testing.assert_allclose(sim[0], 1.0, atol=1e-5)
    assert np.all(sim[1] < 1.0 - 1e-4)


def test_mean_firing_rate_counts_units_still_above_threshold():
    reference = np.array([[1.0, 0.0], [5.0, 0.0], [2.0, 0.0]])  # unit 1 never fires
    thresholds = np.array([0.5, 0.5])
    responses = np.stack([reference, reference * 0.0, reference * 0.2])
    rates = analysis.mean_firing_rate(reference, responses, thresholds, near_max_percentile=90)
    # only unit 0 qualifies; its near-max image is image 1 (5.0): still firing, silent, 1.0 > 0.5
    np.testing.assert_allclose(rates, [1.0, 0.0, 1.0])
    assert np.isnan(analysis.mean_firing_rate(reference, responses, np.array([9.0, 9.0]))).all()


def test_firing_thresholds_shape(encoder):
    t = analysis.firing_thresholds(encoder, NORMS, size=32, n=3)
    assert t.shape == (2048,) and np.all(t >= 0)


def test_occlusion_map_marks_the_region_the_score_depends_on():
    import torch

    batch = torch.ones(1, 1, 40, 40)

    def score(b):  # depends only on the top-left 10x10 block
        return b[:, 0, :10, :10].mean(dim=(1, 2))
    heat = analysis.occlusion_map(score, batch, window=10, stride=5, chunk=7)
    assert heat.shape == (40, 40)
    assert heat[:5, :5].min() > 0.5
    assert np.all(heat[20:, 20:] == 0)


def test_embedding_similarity_is_one_for_the_key(encoder):
    img = np.random.default_rng(5).integers(0, 255, (32, 32), dtype=np.uint8)
    score = analysis.embedding_similarity(encoder, img, NORMS)
    import torch
    with torch.inference_mode():
        assert float(score(analysis.to_batch([img], NORMS))[0]) == pytest.approx(1.0, abs=1e-5)


def test_random_views_are_cropped_resized_and_differ():
    img = np.random.default_rng(6).integers(0, 255, (64, 64), dtype=np.uint8)
    views = analysis.random_views(img, 32, n=2, seed=1)
    assert [v.shape for v in views] == [(32, 32), (32, 32)]
    assert views[0].dtype == np.uint8
    assert not np.array_equal(views[0], views[1])


def test_mask_agreement_at_full_resolution_matches_the_step_by_step_result(encoder):
    rng = np.random.default_rng(7)
    img = rng.integers(0, 255, (48, 40), dtype=np.uint8)
    mask = np.zeros((48, 40), bool)
    mask[5:25, 8:30] = True
    agree = analysis.mask_agreement(encoder, img, mask, NORMS, k=8, layer="layer3", max_side=48)
    maps = analysis.feature_maps(encoder, img, NORMS, "layer3")
    r = analysis.point_biserial(maps, mask)
    np.testing.assert_allclose(agree.correlations, r, atol=1e-4)
    np.testing.assert_allclose(agree.response, analysis.top_filters_map(maps, r, k=8), atol=1e-4)
    small = analysis.mask_agreement(encoder, img, mask, NORMS, k=8, layer="layer3", max_side=24)
    assert small.response.shape == (48, 40)
    assert np.corrcoef(small.correlations, r)[0, 1] > 0.9  # ranking filters on smaller maps changes little


def test_load_encoder_names_the_file_when_it_holds_no_resnet(tmp_path):
    import torch

    from cellemnet.errors import InputError

    path = tmp_path / "not_an_encoder.pth"
    torch.save({"state_dict": {"linear.weight": torch.zeros(2, 2)}}, path)
    with pytest.raises(InputError, match="not_an_encoder.pth"):
        analysis.load_encoder(path)
    with pytest.raises(InputError, match="missing.pth"):
        analysis.load_encoder(tmp_path / "missing.pth")
