"""Informative-patch filter: scores in [0, 1] (1 = informative) and keep/drop decisions for 8-bit EM patches.

Two methods:
- `features` (default, needs no weights): rules on descriptive patch features (see features.py) that ship in
  this module, or a small random forest trained from labels with scikit-learn and saved as plain JSON.
- `nn`: the paper's classifier, torchvision ResNet34 with a one-logit head (fc 512 -> 1), fed the grayscale
  patch copied to three channels, resized to 224 and ImageNet-normalised. Its weights (Zenodo record 6458015,
  `patch_quality_classifier_nn.pth`) come from a local path or a URL. torch is imported only on this path.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from cellemnet.constants import DEFAULT_CROP_SIZE, IMAGENET_NORMS
from cellemnet.dataset.features import FEATURE_NAMES, INDEX, compute_features
from cellemnet.dataset.labeling import PatchLoader, labelled_examples
from cellemnet.errors import ConfigError, InputError
from cellemnet.io import atomic_path, atomic_write_text, load_torch_dict
from cellemnet.tracking import start_run

METHODS = ("features", "nn")
DEFAULT_THRESHOLD = 0.5
MODEL_FORMAT = "cellemnet-patch-filter"
PAPER_WEIGHTS_URL = "https://zenodo.org/record/6458015/files/patch_quality_classifier_nn.pth"
PAPER_WEIGHTS_NAME = "patch_quality_classifier_nn.pth"
NN_INPUT_SIZE = DEFAULT_CROP_SIZE
NN_SUFFIXES = (".pth", ".pt", ".tar", ".ckpt")

# Label-free defaults. A patch is informative when every rule holds; each rule's soft score is a logistic of
# its margin (in log units for "log" rules), so score > 0.5 exactly when all rules pass. Thresholds sit between
# what real EM (ISBI ssTEM, CEM500K example patches) and blank / noise / saturated / blurred versions of it
# measure: structure_snr real >= 1.0 (noisy cryo-ET slices 0.27-0.57) vs blank/noise <= 0.08 (<= 0.12 for
# 112-px edge patches); sharpness real >= 0.5 vs blurred (sigma >= 2 px) <= 0.17;
# saturated real <= 0.18 vs clipped >= 0.44; structure real >= 2.5 gray levels vs blank <= 0.15.
DEFAULT_RULES: tuple[dict[str, Any], ...] = (
    {"feature": "structure_snr", "op": ">=", "threshold": 0.15, "scale": "log", "steepness": 4.0},
    {"feature": "structure", "op": ">=", "threshold": 1.0, "scale": "log", "steepness": 4.0},
    {"feature": "sharpness", "op": ">=", "threshold": 0.2, "scale": "log", "steepness": 6.0},
    {"feature": "saturated", "op": "<=", "threshold": 0.4, "scale": "linear", "steepness": 40.0},
)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free logistic


# --------------------------------------------------------------------------------------------- features method
@dataclass
class RuleModel:
    """Every rule must pass; score = the smallest rule score."""

    rules: Sequence[dict[str, Any]] = DEFAULT_RULES
    threshold: float = DEFAULT_THRESHOLD

    def rule_scores(self, features: np.ndarray) -> np.ndarray:
        cols = []
        for rule in self.rules:
            value = features[:, INDEX[rule["feature"]]]
            if rule.get("scale", "log") == "log":
                margin = np.log(np.maximum(value, 1e-9)) - math.log(rule["threshold"])
            else:
                margin = value - rule["threshold"]
            if rule["op"] == "<=":
                margin = -margin
            cols.append(_sigmoid(rule["steepness"] * margin))
        return np.stack(cols, axis=1) if cols else np.ones((len(features), 0))

    def score_features(self, features: np.ndarray) -> np.ndarray:
        scores = self.rule_scores(features)
        return scores.min(axis=1) if scores.shape[1] else np.ones(len(features))

    def to_dict(self) -> dict[str, Any]:
        return {"format": MODEL_FORMAT, "version": 1, "method": "features", "kind": "rules",
                "feature_names": list(FEATURE_NAMES), "threshold": self.threshold, "rules": list(self.rules)}


@dataclass
class ForestModel:
    """A random forest exported from scikit-learn as arrays; predicts with numpy alone."""

    trees: list[dict[str, np.ndarray]]
    feature_names: Sequence[str] = FEATURE_NAMES
    threshold: float = DEFAULT_THRESHOLD
    info: dict[str, Any] = field(default_factory=dict)

    def score_features(self, features: np.ndarray) -> np.ndarray:
        cols = [INDEX[name] for name in self.feature_names]
        x = features[:, cols]
        total = np.zeros(len(x))
        rows = np.arange(len(x))
        for tree in self.trees:
            node = np.zeros(len(x), dtype=np.int64)
            while True:
                left = tree["left"][node]
                inner = left >= 0
                if not inner.any():
                    break
                go_left = x[rows, np.where(inner, tree["feature"][node], 0)] <= tree["threshold"][node]
                node = np.where(inner, np.where(go_left, left, tree["right"][node]), node)
            total += tree["value"][node]
        return total / max(len(self.trees), 1)

    def to_dict(self) -> dict[str, Any]:
        trees = [{k: v.tolist() for k, v in t.items()} for t in self.trees]
        return {"format": MODEL_FORMAT, "version": 1, "method": "features", "kind": "forest",
                "feature_names": list(self.feature_names), "threshold": self.threshold, "trees": trees,
                "info": self.info}


def forest_from_sklearn(forest, feature_names: Sequence[str] = FEATURE_NAMES, threshold: float = DEFAULT_THRESHOLD,
                        info: dict | None = None) -> ForestModel:
    """Turn a fitted sklearn RandomForestClassifier (classes 0/1) into a ForestModel."""
    positive = list(forest.classes_).index(1)
    trees = []
    for est in forest.estimators_:
        t = est.tree_
        value = t.value[:, 0, :]
        prob = value[:, positive] / np.maximum(value.sum(axis=1), 1e-12)
        trees.append({"left": t.children_left.astype(np.int64), "right": t.children_right.astype(np.int64),
                      "feature": np.maximum(t.feature, 0).astype(np.int64), "threshold": t.threshold.astype(np.float64),
                      "value": prob.astype(np.float64)})
    return ForestModel(trees=trees, feature_names=list(feature_names), threshold=threshold, info=dict(info or {}))


def train_feature_model(features: np.ndarray, labels: np.ndarray, seed: int = 0, n_trees: int = 64,
                        max_depth: int = 8, threshold: float = DEFAULT_THRESHOLD) -> ForestModel:
    """Fit a random forest on (N, N_FEATURES) features and bool labels (True = informative)."""
    from sklearn.ensemble import RandomForestClassifier

    labels = np.asarray(labels).astype(int)
    if len(np.unique(labels)) < 2:
        raise InputError("training needs both good and bad patches; the labels hold only one class")
    forest = RandomForestClassifier(n_estimators=n_trees, max_depth=max_depth, min_samples_leaf=2,
                                    class_weight="balanced", random_state=seed, n_jobs=1)
    forest.fit(features, labels)
    return forest_from_sklearn(forest, threshold=threshold, info={"n_train": int(len(labels)), "seed": seed})


def save_feature_model(model: RuleModel | ForestModel, path: str | os.PathLike) -> Path:
    atomic_write_text(path, json.dumps(model.to_dict()))
    return Path(path)


def feature_model_from_dict(data: dict[str, Any], source: str = "<dict>") -> RuleModel | ForestModel:
    if not isinstance(data, dict) or data.get("format") != MODEL_FORMAT:
        raise InputError(f"{source}: not a {MODEL_FORMAT} JSON file")
    unknown = [n for n in data.get("feature_names", []) if n not in INDEX]
    if unknown:
        raise InputError(f"{source}: unknown feature names {unknown}")
    threshold = float(data.get("threshold", DEFAULT_THRESHOLD))
    try:
        if data.get("kind") == "rules":
            for rule in data["rules"]:
                if rule["feature"] not in INDEX or rule["op"] not in (">=", "<="):
                    raise InputError(f"{source}: bad rule {rule}")
            return RuleModel(rules=tuple(data["rules"]), threshold=threshold)
        if data.get("kind") == "forest":
            trees = [{"left": np.asarray(t["left"], dtype=np.int64), "right": np.asarray(t["right"], dtype=np.int64),
                      "feature": np.asarray(t["feature"], dtype=np.int64),
                      "threshold": np.asarray(t["threshold"], dtype=np.float64),
                      "value": np.asarray(t["value"], dtype=np.float64)} for t in data["trees"]]
            n_feat = len(data["feature_names"])
            for t in trees:
                n = len(t["left"])
                if not all(len(v) == n for v in t.values()) or n == 0 or t["feature"].max() >= n_feat \
                        or t["left"].max() >= n or t["right"].max() >= n:
                    raise InputError(f"{source}: a tree's arrays are inconsistent")
            return ForestModel(trees=trees, feature_names=data["feature_names"], threshold=threshold,
                               info=data.get("info", {}))
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{source}: malformed patch-filter model ({exc})") from None
    raise InputError(f"{source}: unknown patch-filter model kind {data.get('kind')!r}")


def load_feature_model(path: str | os.PathLike) -> RuleModel | ForestModel:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: patch-filter model file not found")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: cannot read patch-filter JSON ({exc})") from None
    return feature_model_from_dict(data, source=str(path))


class FeatureScorer:
    """Scores patches with a features model; `workers` threads compute the features."""

    method = "features"

    def __init__(self, model: RuleModel | ForestModel | None = None, workers: int = 1):
        self.model = model if model is not None else RuleModel()
        self.workers = workers
        self.threshold = self.model.threshold

    def score(self, patches: Sequence[np.ndarray]) -> np.ndarray:
        return self.model.score_features(compute_features(patches, workers=self.workers))


# --------------------------------------------------------------------------------------------------- nn method
def build_resnet34_classifier():
    """torchvision ResNet34 with fc 512 -> 1 (the paper's patch-quality classifier), untrained."""
    import torch.nn as nn
    from torchvision.models import resnet34

    model = resnet34(weights=None)
    model.fc = nn.Linear(model.fc.in_features, 1)
    return model


def offline_weights_message(source: str) -> str:
    return (f"cannot download the patch classifier weights from {source} (offline?). Download "
            f"{PAPER_WEIGHTS_NAME} from Zenodo record 6458015 ({PAPER_WEIGHTS_URL}) on a connected machine and "
            f"pass its local path with --weights, or put it in the torch hub cache "
            f"($TORCH_HOME/hub/checkpoints/{PAPER_WEIGHTS_NAME}); or use --method features, which needs no weights")


def load_nn_state_dict(weights: str | os.PathLike) -> dict:
    """A ResNet34-classifier state dict from a local file or an http(s) URL (cached by torch.hub)."""
    import torch

    source = str(weights)
    if source.startswith(("http://", "https://")):
        try:
            state = torch.hub.load_state_dict_from_url(source, map_location="cpu", weights_only=True, progress=False)
        except Exception as exc:  # urllib/socket errors vary by platform; all mean "could not fetch"
            raise InputError(f"{offline_weights_message(source)} [{type(exc).__name__}: {exc}]") from None
    else:
        path = Path(source)
        if not path.is_file():
            raise InputError(f"{path}: patch classifier weights not found. "
                             f"{offline_weights_message(PAPER_WEIGHTS_URL)}")

        state = load_torch_dict(path, "patch classifier weights file")
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise InputError(f"{source}: expected a state dict of a ResNet34 classifier")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_nn_model(weights: str | os.PathLike):
    """The ResNet34 classifier with the given weights; wrong keys or shapes raise InputError naming the file."""
    state = load_nn_state_dict(weights)
    model = build_resnet34_classifier()
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})" for k, v in expected.items()
             if k in state and tuple(getattr(state[k], "shape", ())) != tuple(v.shape)]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            parts.append("wrong shapes: " + ", ".join(wrong[:3]) + (" ..." if len(wrong) > 3 else ""))
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        raise InputError(f"{weights}: not a ResNet34 patch classifier with fc 512->1: " + "; ".join(parts))
    model.load_state_dict(state)
    return model


def nn_preprocess(patches: Sequence[np.ndarray], device, size: int = NN_INPUT_SIZE, channels_last: bool = False):
    """uint8 patches -> (N, 3, size, size) float tensor: gray copied to RGB, resized, ImageNet-normalised.

    Patches of equal shape are stacked in one copy; only odd-sized (edge) patches are resized, group by group.
    """
    import torch
    import torch.nn.functional as F

    n = len(patches)
    out = torch.empty((n, 1, size, size), dtype=torch.float32, device=device)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, p in enumerate(patches):
        groups.setdefault(tuple(p.shape), []).append(i)
    for shape, idx in groups.items():
        batch = torch.from_numpy(np.stack([patches[i] for i in idx])).to(device, non_blocking=True)
        batch = batch.unsqueeze(1).float().div_(255.0)
        if shape != (size, size):
            batch = F.interpolate(batch, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        if len(idx) == n:
            out = batch
        else:
            out[torch.as_tensor(idx, device=device)] = batch
    mean = torch.tensor(IMAGENET_NORMS["mean"], device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_NORMS["std"], device=device).view(1, 3, 1, 1)
    x = (out.expand(-1, 3, -1, -1) - mean) / std
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


class NNScorer:
    """Scores patches with the ResNet34 classifier; GPU with AMP and channels_last when present, else CPU."""

    method = "nn"

    def __init__(self, weights: str | os.PathLike | None = None, model=None, device: str = "auto",
                 batch_size: int = 64, threshold: float = DEFAULT_THRESHOLD, input_size: int = NN_INPUT_SIZE):
        import torch

        from cellemnet.runtime import select_device  # lazy: imports torch

        if model is None:
            if weights is None:
                raise ConfigError(f"--method nn needs --weights (a local {PAPER_WEIGHTS_NAME} or a URL); "
                                  f"{offline_weights_message(PAPER_WEIGHTS_URL)}")
            model = load_nn_model(weights)
        self.device = select_device(device)
        self.channels_last = self.device.type == "cuda"
        model = model.to(self.device).eval()
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.batch_size = batch_size
        self.threshold = threshold
        self.input_size = input_size

    def score(self, patches: Sequence[np.ndarray]) -> np.ndarray:
        import torch

        from cellemnet.runtime import autocast  # lazy: imports torch

        scores = []
        with torch.inference_mode():
            for start in range(0, len(patches), self.batch_size):
                chunk = patches[start:start + self.batch_size]
                x = nn_preprocess(chunk, self.device, size=self.input_size, channels_last=self.channels_last)
                with autocast(self.device):
                    logits = self.model(x)
                scores.append(torch.sigmoid(logits.float()).view(-1).cpu().numpy())
        return np.concatenate(scores) if scores else np.zeros(0)


# ------------------------------------------------------------------------------------------------- front door
def resolve_method(weights: str | os.PathLike | None, method: str | None) -> str:
    """`method` when given; otherwise guessed from the weights (JSON -> features, torch file/URL -> nn)."""
    if method is not None:
        if method not in METHODS:
            raise ConfigError(f"unknown patch-filter method {method!r}; choose one of {', '.join(METHODS)}")
        return method
    if weights is None:
        return "features"
    source = str(weights).lower()
    if source.endswith(".json"):
        return "features"
    if source.startswith(("http://", "https://")) or source.endswith(NN_SUFFIXES):
        return "nn"
    raise ConfigError(f"cannot tell the method from weights {weights!s}; pass method='features' or 'nn'")


def make_scorer(weights: str | os.PathLike | None = None, method: str | None = None, device: str = "auto",
                batch_size: int = 64, workers: int = 1, threshold: float | None = None):
    """A FeatureScorer or NNScorer; `threshold` overrides the one stored with a features model."""
    method = resolve_method(weights, method)
    if method == "features":
        model = load_feature_model(weights) if weights is not None else RuleModel()
        scorer = FeatureScorer(model, workers=workers)
    else:
        scorer = NNScorer(weights=weights, device=device, batch_size=batch_size)
    if threshold is not None:
        scorer.threshold = float(threshold)
    return scorer


def _as_patch_list(patches: Iterable[np.ndarray] | np.ndarray) -> list[np.ndarray]:
    out = list(patches)
    for i, p in enumerate(out):
        p = np.asarray(p)
        if p.ndim != 2 or p.dtype != np.uint8:
            raise ValueError(f"patch {i}: expected a 2D uint8 array, got {p.dtype} {p.shape}")
        out[i] = p
    return out


def score_patches(patches: Iterable[np.ndarray], weights=None, method: str | None = None, **kwargs) -> np.ndarray:
    """Informativeness scores in [0, 1] of 2D uint8 patches."""
    patches = _as_patch_list(patches)
    return make_scorer(weights, method, **kwargs).score(patches)


def predict_informative(patches: Iterable[np.ndarray], weights=None, method: str | None = None,
                        threshold: float | None = None, **kwargs) -> np.ndarray:
    """Bool per patch, True = keep: the decision classify_patches.py makes (score > threshold)."""
    patches = _as_patch_list(patches)
    scorer = make_scorer(weights, method, threshold=threshold, **kwargs)
    return scorer.score(patches) > scorer.threshold


# ------------------------------------------------------------------------------------------ synthetic bad patches
UNINFORMATIVE_KINDS = ("blank", "noise", "overexposed", "underexposed", "blurred")


def spoil_patch(patch: np.ndarray, kind: str, rng: np.random.Generator | None = None) -> np.ndarray:
    """An uninformative uint8 patch derived from a real one, for tests and for seeding a labelled set.

    blank: flat at the patch's mean with faint noise (empty resin); noise: white noise with the patch's mean and
    contrast; over/underexposed: shifted so that most pixels clip; blurred: Gaussian blur sigma 6 (far out of focus).
    """
    import cv2

    rng = rng if rng is not None else np.random.default_rng(0)
    x = patch.astype(np.float32)
    if kind == "blank":
        out = np.full(x.shape, x.mean()) + rng.normal(0.0, 2.0, x.shape)
    elif kind == "noise":
        out = rng.normal(x.mean(), max(float(x.std()), 10.0), x.shape)
    elif kind == "overexposed":
        out = x + (255.0 - np.percentile(x, 30))
    elif kind == "underexposed":
        out = x - np.percentile(x, 70)
    elif kind == "blurred":
        out = cv2.GaussianBlur(x, (0, 0), sigmaX=6.0, borderType=cv2.BORDER_REFLECT)
    else:
        raise ValueError(f"unknown kind {kind!r}; choose one of {UNINFORMATIVE_KINDS}")
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------------------ training
MIN_LABELLED = 64
VALIDATION_FRACTION = 0.15
SPLIT_SEED = 1227
IMAGENET_RESNET34_FILE = "resnet34-b627a593.pth"  # torchvision's ResNet34_Weights.IMAGENET1K_V1 file name


def split_train_validation(labels: np.ndarray, fraction: float = VALIDATION_FRACTION,
                           seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, validation): a seeded split, stratified by label when each class has >= 2 members."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    counts = np.bincount(np.asarray(labels).astype(int), minlength=2)
    stratify = labels if counts.min() >= 2 else None
    train, val = train_test_split(idx, test_size=fraction, random_state=seed, stratify=stratify)
    return np.sort(train), np.sort(val)


def evaluation_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> dict:
    """Accuracy, ROC AUC (None with one class), confusion matrix [[TN, FP], [FN, TP]] (positive = good)."""
    from sklearn.metrics import accuracy_score, confusion_matrix, roc_auc_score

    labels = np.asarray(labels).astype(bool)
    pred = np.asarray(scores) > threshold
    auc = float(roc_auc_score(labels, scores)) if len(np.unique(labels)) == 2 else None
    cm = confusion_matrix(labels, pred, labels=[False, True])
    return {"accuracy": float(accuracy_score(labels, pred)), "auc": auc, "confusion_matrix": cm.tolist(),
            "n": int(len(labels)), "threshold": float(threshold)}


def save_roc_curve(labels: np.ndarray, scores: np.ndarray, path: str | os.PathLike, title: str) -> Path | None:
    """ROC curve PNG with the AUC in the legend; None when the labels hold a single class."""
    if len(np.unique(labels)) < 2:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_auc_score, roc_curve

    fpr, tpr, _ = roc_curve(labels, scores)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot(fpr, tpr, label=f"AUC = {roc_auc_score(labels, scores):.3f}")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate (good kept)", title=title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return Path(path)


def imagenet_resnet34_state() -> dict | None:
    """torchvision's ImageNet ResNet34 weights when already in the torch hub cache (never downloads)."""
    import torch

    path = Path(torch.hub.get_dir()) / "checkpoints" / IMAGENET_RESNET34_FILE
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


def nn_train_augmentations():
    """Mild augmentations that leave an informative patch informative (the paper's set, albumentations 2.x)."""
    import albumentations as A

    return A.Compose([
        A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.5),
        A.GaussNoise(std_range=(0.025, 0.04), p=0.5),  # sigma 6-10 gray levels (the paper's variance 40-100)
        A.GaussianBlur(blur_limit=(3, 5), p=0.5),
        A.HorizontalFlip(p=0.5),
        A.VerticalFlip(p=0.5),
    ])


def train_nn_classifier(train_patches: Sequence[np.ndarray], train_labels: np.ndarray,
                        val_patches: Sequence[np.ndarray], val_labels: np.ndarray, epochs: int = 30,
                        batch_size: int = 64, lr: float = 1e-3, device: str = "auto", seed: int = SPLIT_SEED,
                        imagenet_init: bool = True, log=print, tracker=None, progress: bool = True,
                        input_size: int = NN_INPUT_SIZE):
    """The paper's recipe: ResNet34 (ImageNet init when cached locally), only layer4 + fc trained, Adam, BCE.

    Returns (model on CPU, validation scores, info dict). `input_size` other than 224 is for quick tests.
    """
    import torch
    from tqdm import tqdm

    from cellemnet.runtime import autocast, make_grad_scaler, seed_everything, select_device  # lazy: imports torch

    seed_everything(seed)
    dev = select_device(device)
    model = build_resnet34_classifier()
    init = "random"
    state = imagenet_resnet34_state() if imagenet_init else None
    if state is not None:
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        model.load_state_dict(state, strict=False)
        init = "imagenet"
        log("init: ImageNet ResNet34 weights from the torch hub cache")
    else:
        log(f"init: RANDOM (no {IMAGENET_RESNET34_FILE} in {Path(torch.hub.get_dir()) / 'checkpoints'}; "
            f"put torchvision's ImageNet ResNet34 file there for the paper's ImageNet initialisation)")
    for name, param in model.named_parameters():
        param.requires_grad = name.startswith(("layer4.", "fc."))
    model = model.to(dev)
    channels_last = dev.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    scaler = make_grad_scaler(dev)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    augment = nn_train_augmentations()
    rng = np.random.default_rng(seed)
    targets = torch.as_tensor(np.asarray(train_labels), dtype=torch.float32)
    scorer = NNScorer(model=model, device=str(dev), batch_size=batch_size, input_size=input_size)
    val_scores = np.zeros(0)
    n_steps = max(1, -(-len(train_patches) // batch_size))
    for epoch in range(1, epochs + 1):
        model.train()
        order = rng.permutation(len(train_patches))
        total = 0.0
        bar = tqdm(range(n_steps), desc=f"epoch {epoch}/{epochs}", disable=not progress, leave=False)
        for step in bar:
            idx = order[step * batch_size:(step + 1) * batch_size]
            batch = [augment(image=train_patches[i])["image"] for i in idx]
            x = nn_preprocess(batch, dev, size=input_size, channels_last=channels_last)
            y = targets[idx].to(dev)
            optimizer.zero_grad(set_to_none=True)
            with autocast(dev):
                loss = loss_fn(model(x).float().view(-1), y)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            loss_value = loss.detach().item()
            total += loss_value * len(idx)
            bar.set_postfix(loss=f"{loss_value:.3f}")
        model.eval()
        val_scores = scorer.score(list(val_patches))
        metrics = evaluation_metrics(val_labels, val_scores)
        train_loss = total / len(train_patches)
        log(f"epoch {epoch}/{epochs}: train loss {train_loss:.4f}, val accuracy {metrics['accuracy']:.3f}"
            + (f", val AUC {metrics['auc']:.3f}" if metrics["auc"] is not None else ""))
        if tracker is not None:
            tracker.log_metrics({"train_loss": train_loss, "val_accuracy": metrics["accuracy"],
                                 "val_auc": metrics["auc"]}, step=epoch)
    return model.cpu(), val_scores, {"init": init, "device": str(dev), "epochs": epochs, "batch_size": batch_size,
                                     "lr": lr}


def train_patch_classifier(labels_csv: str | os.PathLike, savedir: str | os.PathLike, method: str = "features",
                           epochs: int = 30, batch_size: int = 64, device: str = "auto", track: bool = False,
                           tracking_dir: str | os.PathLike | None = None, min_labelled: int = MIN_LABELLED,
                           log=print, progress: bool = True, nn_input_size: int = NN_INPUT_SIZE) -> dict:
    """Train a patch filter from a labels CSV; write the model, ROC PNG, metrics JSON and confusion CSV.

    Returns the metrics dict (also in SAVEDIR/metrics.json). Validation: 15% of the labelled patches, split
    with a fixed seed. The untrained default rules are scored on the same validation patches for comparison.
    """
    method = resolve_method(None, method)
    savedir = Path(savedir)
    loader = PatchLoader()
    refs, labels = labelled_examples(labels_csv, min_labelled=min_labelled, loader=loader)
    if labels.all() or not labels.any():
        raise InputError(f"{labels_csv}: training needs both good and bad labels "
                         f"(found {int(labels.sum())} good, {int((~labels).sum())} bad)")
    patches = [loader(r) for r in refs]
    train_idx, val_idx = split_train_validation(labels)
    log(f"{len(refs)} labelled patches ({int(labels.sum())} good, {int((~labels).sum())} bad): "
        f"{len(train_idx)} train, {len(val_idx)} validation")
    val_patches = [patches[i] for i in val_idx]
    val_labels = labels[val_idx]
    default_scores = FeatureScorer().score(val_patches)
    params = {"method": method, "labels_csv": str(labels_csv), "n_labelled": len(refs), "n_train": len(train_idx),
              "n_val": len(val_idx), "split_seed": SPLIT_SEED, "epochs": epochs, "batch_size": batch_size}
    tracker = start_run("patch_classifier", run_name=f"patch_filter_{method}", params=params, enabled=track,
                        tracking_dir=tracking_dir)
    with tracker:
        if method == "features":
            feats = compute_features(patches)
            model = train_feature_model(feats[train_idx], labels[train_idx])
            val_scores = model.score_features(feats[val_idx])
            model_path = save_feature_model(model, savedir / "patch_filter_features.json")
            info = {"model": "random forest on patch features", "n_trees": len(model.trees)}
        else:
            import torch

            net, val_scores, info = train_nn_classifier(
                [patches[i] for i in train_idx], labels[train_idx], val_patches, val_labels, epochs=epochs,
                batch_size=batch_size, device=device, log=log, tracker=tracker, progress=progress,
                input_size=nn_input_size)
            model_path = savedir / PAPER_WEIGHTS_NAME
            with atomic_path(model_path) as tmp:
                torch.save(net.state_dict(), tmp)
        metrics = {"method": method, **params, **info, "weights": str(model_path),
                   "validation": evaluation_metrics(val_labels, val_scores),
                   "validation_default_rules": evaluation_metrics(val_labels, default_scores)}
        roc = save_roc_curve(val_labels, val_scores, savedir / f"patch_quality_{method}_roc_curve.png",
                             f"patch filter ({method}), validation")
        metrics["roc_curve"] = str(roc) if roc else None
        cm = metrics["validation"]["confusion_matrix"]
        atomic_write_text(savedir / "confusion_matrix.csv",
                          f"true\\predicted,bad,good\nbad,{cm[0][0]},{cm[0][1]}\ngood,{cm[1][0]},{cm[1][1]}\n")
        atomic_write_text(savedir / "metrics.json", json.dumps(metrics, indent=2))
        tracker.log_metrics({"val_accuracy": metrics["validation"]["accuracy"],
                             "val_auc": metrics["validation"]["auc"],
                             "val_accuracy_default_rules": metrics["validation_default_rules"]["accuracy"]})
        for artifact in (model_path, roc, savedir / "metrics.json", savedir / "confusion_matrix.csv"):
            if artifact is not None:
                tracker.log_artifact(artifact)
    return metrics
