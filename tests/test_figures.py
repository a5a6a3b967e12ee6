"""cellemnet.figures: the one overlay (its looks, colours at masked pixels, the PNG written pixel for pixel) and the
grouped bar chart (error bars, slanted labels, series order) that evaluation/report.py draws through."""
from __future__ import annotations

import numpy as np
import pytest
from matplotlib.container import BarContainer, ErrorbarContainer
from PIL import Image
from scipy import ndimage

from cellemnet import figures
from cellemnet.errors import InputError


@pytest.fixture
def scene():
    """A horizontal gray ramp, a ground-truth square and a prediction square that overlaps it."""
    image = np.tile(np.linspace(0, 255, 48), (40, 1)).astype(np.uint8)
    truth = np.zeros(image.shape, bool)
    truth[5:25, 5:25] = True
    pred = np.zeros(image.shape, np.uint8)
    pred[15:35, 15:40] = 2  # a label id: anything > 0 is drawn
    return image, truth, pred


def _former_infer_overlay(image, pred, truth):
    """What evaluation/infer.py wrote before the overlay moved to figures (the reference the PNG must keep)."""
    rgb = np.repeat(image[..., None], 3, axis=-1).astype(np.float32)
    fg = pred > 0
    rgb[fg] = 0.6 * rgb[fg] + 0.4 * np.array([255, 0, 255], np.float32)
    edge = truth & ~ndimage.binary_erosion(truth)
    rgb[edge] = (0, 255, 0)
    return rgb.clip(0, 255).astype(np.uint8)


def test_default_overlay_dims_the_image_and_brightens_truth_green_prediction_magenta(scene):
    image, truth, pred = scene
    rgb = figures.overlay_rgb(image, truth, pred)
    assert rgb.shape == (40, 48, 3) and rgb.dtype == np.float32 and rgb.min() >= 0 and rgb.max() <= 1
    gray = image / 255.0 * 0.7
    np.testing.assert_allclose(rgb[38, 30], [gray[38, 30]] * 3, atol=1e-6)  # neither: dimmed gray
    only_truth, only_pred, both = (8, 8), (30, 30), (20, 20)
    np.testing.assert_allclose(rgb[only_truth], np.clip(gray[only_truth] + np.array([0, 0.45, 0]), 0, 1), atol=1e-6)
    np.testing.assert_allclose(rgb[only_pred], np.clip(gray[only_pred] + np.array([0.45, 0, 0.45]), 0, 1), atol=1e-6)
    np.testing.assert_allclose(rgb[both], np.clip(gray[both] + 0.45, 0, 1), atol=1e-6)  # gray + green + magenta
    assert rgb[both].min() > rgb[only_truth].min()  # where both agree it is the lightest


def test_blend_tints_a_mask_in_its_colour_and_leaves_the_rest_gray():
    image = np.zeros((4, 4), np.uint8)
    mask = np.zeros((4, 4), bool)
    mask[0, 0] = True
    rgb = figures.overlay_rgb(image, mask, blend=0.5, mask_color=(1, 0, 0))
    np.testing.assert_allclose(rgb[0, 0], [0.5, 0, 0])
    assert np.all(rgb[1:, 1:] == 0)
    bright = figures.overlay_rgb(np.full((4, 4), 255, np.uint8), mask, blend=0.4, mask_color=(0.1, 0.8, 1.0))
    np.testing.assert_allclose(bright[0, 0], [0.64, 0.92, 1.0], atol=1e-6)
    np.testing.assert_allclose(bright[2, 2], [1, 1, 1])  # full brightness outside the mask


def test_float_images_are_taken_as_0_to_1_or_rescaled():
    ramp = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_allclose(figures.overlay_rgb(ramp, blend=0.4)[..., 0], ramp)
    wide = ramp * 4000 + 1000  # e.g. 16-bit detector values: min-max rescaled, not clipped to white
    np.testing.assert_allclose(figures.overlay_rgb(wide.astype(np.uint16), blend=0.4)[..., 1], ramp, atol=1e-3)


def test_inner_edge_is_the_mask_minus_its_erosion():
    rng = np.random.default_rng(3)
    for _ in range(5):
        mask = ndimage.binary_opening(rng.random((30, 26)) > 0.4)
        np.testing.assert_array_equal(figures.inner_edge(mask), mask & ~ndimage.binary_erosion(mask))
    full = np.ones((5, 5), bool)
    assert figures.inner_edge(full).sum() == 16  # the image border counts as outside


def test_outline_draws_the_truth_edge_solid_green_over_the_prediction(scene):
    image, truth, pred = scene
    rgb = figures.overlay_rgb(image, truth, pred, blend=0.4, outline=True)
    edge = figures.inner_edge(truth)
    assert np.all(rgb[edge] == [0, 1, 0])
    np.testing.assert_allclose(rgb[20, 20], 0.6 * image[20, 20] / 255 + 0.4 * np.array([1, 0, 1]), atol=1e-6)
    np.testing.assert_allclose(rgb[8, 8], [image[8, 8] / 255] * 3, atol=1e-6)  # inside the truth: not filled


def test_rgb_png_writes_the_overlay_pixel_for_pixel_as_infer_did(scene, tmp_path):
    image, truth, pred = scene
    path = figures.rgb_png(figures.overlay_rgb(image, truth, pred, blend=0.4, outline=True), tmp_path / "o" / "a.png")
    assert path == tmp_path / "o" / "a.png" and not list(path.parent.glob(".*part*"))
    with Image.open(path) as img:
        assert img.format == "PNG" and img.mode == "RGB" and img.size == (48, 40)
        written = np.asarray(img)
    reference = _former_infer_overlay(image, pred, truth)
    assert np.abs(written.astype(int) - reference.astype(int)).max() <= 1  # rounding instead of truncation
    assert np.all(written[figures.inner_edge(truth)] == [0, 255, 0])


def test_rgb_png_takes_uint8_as_is_and_refuses_a_gray_array(tmp_path):
    rgb = np.zeros((3, 5, 3), np.uint8)
    rgb[1, 2] = (10, 200, 30)
    with Image.open(figures.rgb_png(rgb, tmp_path / "u.png")) as img:
        np.testing.assert_array_equal(np.asarray(img), rgb)
    with pytest.raises(InputError, match=r"\(H, W, 3\)"):
        figures.rgb_png(np.zeros((3, 5)), tmp_path / "g.png")


@pytest.fixture
def drawn(monkeypatch):
    """The figures the functions draw (their matplotlib Figure), captured before they are written."""
    made = []
    real = figures._figure_to_png

    def capture(fig, path):
        made.append(fig)
        return real(fig, path)

    monkeypatch.setattr(figures, "_figure_to_png", capture)
    return made


def test_grouped_bars_draws_error_bars_slanted_labels_and_the_given_series_order(drawn, tmp_path):
    values = {"lucchi_pp\n(100 it)": {"random_init": 0.5, "mocov2": 0.7}, "guay\n(50 it)": {"mocov2": 0.9}}
    errors = {"lucchi_pp\n(100 it)": {"random_init": 0.05, "mocov2": 0.0}, "guay\n(50 it)": {"mocov2": 0.1}}
    path = figures.grouped_bars(values, tmp_path / "bars.png", errors=errors, rotate=30,
                                series=["random_init", "mocov2"])
    with Image.open(path) as img:
        assert img.format == "PNG" and img.width > 300 and img.height > 200
    ax = drawn[-1].axes[0]
    bars = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert [b.get_label() for b in bars] == ["random_init", "mocov2"]
    np.testing.assert_allclose([r.get_height() for r in bars[1]], [0.7, 0.9])
    error_bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(error_bars) == 2  # one per series
    segments = [seg for c in error_bars for seg in c.lines[2][0].get_segments()]
    spans = sorted(round(float(s[1][1] - s[0][1]), 6) for s in segments if len(s) == 2 and np.all(np.isfinite(s)))
    assert spans == [0.1, 0.2]  # +-0.05 and +-0.1; sd 0 (one run) draws none
    labels = ax.get_xticklabels()
    assert [t.get_text() for t in labels] == list(values) and all(t.get_rotation() == 30 for t in labels)


def test_grouped_bars_without_errors_has_no_error_bars_and_sorted_series(drawn, tmp_path):
    figures.grouped_bars({"a": {"y": 0.2, "x": 0.4}}, tmp_path / "plain.png")
    ax = drawn[-1].axes[0]
    assert not [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert [c.get_label() for c in ax.containers] == ["x", "y"]
    assert ax.get_xticklabels()[0].get_rotation() == 0
    assert [t.get_text() for t in ax.texts] == ["0.40", "0.20"]  # value labels on the bars
