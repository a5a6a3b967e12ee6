"""Informative-patch filter: label-free defaults on real EM, trained feature models, the ResNet34 path."""
import json
from pathlib import Path

import numpy as np
import pytest

from cellemnet.dataset.quality import (
    UNINFORMATIVE_KINDS,
    ForestModel,
    RuleModel,
    feature_model_from_dict,
    load_feature_model,
    predict_informative,
    resolve_method,
    save_feature_model,
    score_patches,
    spoil_patch,
    train_feature_model,
)
from cellemnet.errors import ConfigError, InputError


def _read_gray(path: Path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path).convert("L"))


def real_em_patches(shared_data: Path) -> dict[str, np.ndarray]:
    """ISBI slices cut to 224 crops, the CEM500K example patches and the correlation crops."""
    patches = {}
    for path in sorted((shared_data / "isbi2012").glob("*/images/*.png"))[::6]:
        img = _read_gray(path)
        for y in (0, 224):
            for x in (0, 224):
                patches[f"{path.parent.parent.name}-{path.stem}-{y}-{x}"] = img[y:y + 224, x:x + 224]
    for path in sorted((shared_data / "cem-examples").glob("*/*.tiff")):
        patches[path.stem] = _read_gray(path)
    for path in sorted((shared_data / "cem-examples" / "correlation" / "images").glob("*.png")):
        patches[path.stem] = _read_gray(path)
    return patches


def _texture(seed, size=224, noise=3.0, amplitude=40.0):
    """EM-like stand-in: compartments with dark one-pixel membranes, granular interiors, pixel noise."""
    import cv2

    rng = np.random.default_rng(seed)
    field = cv2.GaussianBlur(rng.normal(0, 1, (size, size)).astype(np.float32), (0, 0), 6)
    inside = field > 0
    membrane = inside ^ cv2.erode(inside.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    grain = cv2.GaussianBlur(rng.normal(0, 1, (size, size)).astype(np.float32), (0, 0), 1.5)
    img = 150 + amplitude * (0.5 * inside + 0.3 * grain / grain.std() - 1.5 * membrane)
    img += rng.normal(0, noise, (size, size))
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


@pytest.mark.shared_data
def test_real_em_kept_and_degraded_versions_dropped(shared_data):
    real = real_em_patches(shared_data)
    assert len(real) >= 40
    keep = predict_informative(list(real.values()))
    kept_rate = keep.mean()
    print(f"\nreal EM patches kept: {keep.sum()}/{len(keep)} ({kept_rate:.1%})")
    dropped_missed = [name for name, k in zip(real, keep) if not k]
    assert kept_rate >= 0.95, f"real patches dropped: {dropped_missed}"
    rng = np.random.default_rng(0)
    for kind in UNINFORMATIVE_KINDS:
        bad = [spoil_patch(p, kind, rng) for p in real.values()]
        dropped = ~predict_informative(bad)
        print(f"{kind:>12}: dropped {dropped.sum()}/{len(bad)} ({dropped.mean():.1%})")
        assert dropped.mean() >= 0.95, kind


def test_sparse_but_real_structure_is_kept():
    """Mostly empty resin with one small textured region (a lone organelle) still counts as informative."""
    rng = np.random.default_rng(1)
    resin = np.clip(np.round(200 + rng.normal(0, 3, (224, 224))), 0, 255).astype(np.uint8)
    sparse = resin.copy()
    sparse[20:70, 30:80] = _texture(2, size=50, amplitude=50)
    keep = predict_informative([resin, sparse])
    assert keep.tolist() == [False, True]


def test_scores_are_soft_and_threshold_moves_the_decision():
    patches = [_texture(0), _texture(1, amplitude=3.0), spoil_patch(_texture(2), "blank")]
    scores = score_patches(patches)
    assert ((scores >= 0) & (scores <= 1)).all()
    assert scores[0] > 0.9 and scores[2] < 0.1
    assert predict_informative(patches, threshold=0.0).all()
    assert not predict_informative(patches, threshold=1.0).any()


def test_rule_model_roundtrips_through_json(tmp_path):
    path = save_feature_model(RuleModel(threshold=0.4), tmp_path / "rules.json")
    model = load_feature_model(path)
    assert isinstance(model, RuleModel) and model.threshold == 0.4
    patches = [_texture(3), spoil_patch(_texture(3), "noise")]
    assert predict_informative(patches, weights=path).tolist() == [True, False]


def test_trained_forest_roundtrips_and_matches_sklearn(tmp_path):
    from sklearn.ensemble import RandomForestClassifier

    from cellemnet.dataset.quality import forest_from_sklearn

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 18))
    y = (x[:, 3] + 0.5 * x[:, 7] > 0).astype(int)
    forest = RandomForestClassifier(n_estimators=5, max_depth=4, random_state=0).fit(x, y)
    model = forest_from_sklearn(forest)
    np.testing.assert_allclose(model.score_features(x), forest.predict_proba(x)[:, 1], atol=1e-9)
    again = load_feature_model(save_feature_model(model, tmp_path / "forest.json"))
    assert isinstance(again, ForestModel)
    np.testing.assert_allclose(again.score_features(x), model.score_features(x))


def test_train_feature_model_needs_two_classes():
    with pytest.raises(InputError, match="both"):
        train_feature_model(np.zeros((10, 18)), np.ones(10, bool))


def test_bad_model_files_name_the_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="bad.json"):
        load_feature_model(bad)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(InputError, match="other.json"):
        predict_informative([_texture(0)], weights=other)
    with pytest.raises(InputError, match="missing.json"):
        load_feature_model(tmp_path / "missing.json")
    with pytest.raises(InputError, match="inconsistent"):
        feature_model_from_dict({"format": "cellemnet-patch-filter", "kind": "forest", "feature_names": ["std"],
                                 "trees": [{"left": [1], "right": [2], "feature": [0], "threshold": [0.0],
                                            "value": [0.5]}]})


def test_method_resolution():
    assert resolve_method(None, None) == "features"
    assert resolve_method("m.json", None) == "features"
    assert resolve_method("w.pth", None) == "nn"
    assert resolve_method("https://zenodo.org/x/y.pth", None) == "nn"
    with pytest.raises(ConfigError):
        resolve_method(None, "forest")
    with pytest.raises(ConfigError):
        resolve_method("weights.bin", None)


def test_rejects_non_uint8_patches():
    with pytest.raises(ValueError, match="uint8"):
        predict_informative([np.zeros((10, 10), np.float32)])


# ------------------------------------------------------------------------------------------------------ nn method
def test_nn_method_scores_with_a_saved_state_dict(tmp_path):
    import torch

    from cellemnet.dataset.quality import build_resnet34_classifier

    torch.manual_seed(0)
    model = build_resnet34_classifier()
    torch.nn.init.zeros_(model.fc.weight)
    torch.nn.init.constant_(model.fc.bias, 2.0)  # sigmoid(2) = 0.88 for every patch
    path = tmp_path / "clf.pth"
    torch.save(model.state_dict(), path)
    patches = [_texture(0), _texture(1, size=150)]  # an edge-sized patch is resized to 224
    scores = score_patches(patches, weights=path, method="nn", batch_size=2)
    np.testing.assert_allclose(scores, 1 / (1 + np.exp(-2.0)), rtol=1e-5)
    assert predict_informative(patches, weights=path).all()
    assert not predict_informative(patches, weights=path, threshold=0.9).any()


def test_nn_preprocess_matches_paper_transform():
    """gray -> 3 identical channels, /255, ImageNet normalisation, 224x224."""
    import torch

    from cellemnet.constants import IMAGENET_NORMS
    from cellemnet.dataset.quality import nn_preprocess

    patch = _texture(4)
    x = nn_preprocess([patch, patch], torch.device("cpu"))
    assert x.shape == (2, 3, 224, 224)
    for c in range(3):
        expected = (patch / 255.0 - IMAGENET_NORMS["mean"][c]) / IMAGENET_NORMS["std"][c]
        np.testing.assert_allclose(x[0, c].numpy(), expected, atol=1e-5)


def test_nn_wrong_shape_weights_and_offline_url_give_clear_errors(tmp_path):
    import torch
    from torchvision.models import resnet34

    wrong = tmp_path / "imagenet_head.pth"
    torch.save(resnet34(weights=None).state_dict(), wrong)  # fc 512 -> 1000
    with pytest.raises(InputError, match=r"imagenet_head.pth.*fc.weight"):
        predict_informative([_texture(0)], weights=wrong, method="nn")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(InputError, match="garbage.pth"):
        predict_informative([_texture(0)], weights=garbage, method="nn")
    with pytest.raises(InputError, match="6458015"):
        predict_informative([_texture(0)], weights=tmp_path / "patch_quality_classifier_nn.pth", method="nn")
    with pytest.raises(ConfigError, match="6458015"):
        predict_informative([_texture(0)], method="nn")


def test_synthetic_em_kept_and_synthetic_blank_fields_dropped():
    from cellemnet.synthetic import make_image
    from cellemnet.synthetic import make_uninformative as blank_field

    good = []
    for seed, look in enumerate(("tem", "sem_inverted", "fib_sem", "sstem")):
        img, _ = make_image((448, 448), look=look, seed=seed)
        good += [img[:224, :224], img[224:, 224:]]
    bad = [blank_field((224, 224), kind, seed=s) for s, kind in enumerate(("resin", "noise", "saturated") * 2)]
    assert predict_informative(good).all()
    assert not predict_informative(bad).any()
