"""The evaluation config: every key of the original benchmark YAML files, validated before anything runs.

Data locations: `data_dir`, `test_dir2d`, `test_dir3d` and `test_dir` may be relative; they are resolved against
the data root (`data_root=...` on the command line or in the file, else the CELLEMNET_DATA_ROOT environment
variable, else the current directory). Tracked YAML files therefore never need rewriting for a machine.

Importing this module does not import torch (checking the augmentations loads albumentations, which does).
"""
from __future__ import annotations

import difflib
import os
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping

from cellemnet.config import Field, load_config
from cellemnet.constants import EM_MEAN, EM_STD
from cellemnet.encoder import Norms
from cellemnet.errors import ConfigError
from cellemnet.evaluation.augment import build_train_transforms, scale_warning
from cellemnet.evaluation.data import find_pairs, image_size

DATA_ROOT_ENV = "CELLEMNET_DATA_ROOT"
FINETUNE_LAYERS = ("none", "layer4", "layer3", "layer2", "layer1", "all")
NAMED_PRETRAININGS = ("random_init", "imagenet_supervised", "cellemnet_mocov2", "cellemnet_swav")
MODES_3D = ("stack", "orthoplane")
ENCODERS = ("resnet18", "resnet34", "resnet50")  # = cellemnet.encoder.ENCODER_ARCHS (no torch import here)
DATA_PATH_KEYS = ("data_dir", "test_dir2d", "test_dir3d", "test_dir")


def _positive(value) -> str | None:
    return None if value > 0 else "must be > 0"


def _non_negative(value) -> str | None:
    return None if value >= 0 else "must be >= 0"


def _probability(value) -> str | None:
    return None if 0.0 <= value <= 1.0 else "must be between 0 and 1"


def _check_norms(value) -> str | None:
    if set(value) != {"mean", "std"}:
        return "must have exactly the keys 'mean' and 'std'"
    mean, std = value["mean"], value["std"]
    mean = mean if isinstance(mean, list) else [mean]
    std = std if isinstance(std, list) else [std]
    if len(mean) != len(std) or len(mean) not in (1, 3):
        return "mean and std must both be one number (1 channel) or lists of 1 or 3 numbers"
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in mean + std):
        return "mean and std must be numbers"
    if any(s <= 0 for s in std):
        return "std must be > 0"
    return None


def _check_augmentations(value) -> str | None:
    for i, entry in enumerate(value):
        if not isinstance(entry, dict) or "aug" not in entry:
            return f"entry {i} must be a mapping with an 'aug' key (e.g. {{aug: HorizontalFlip}})"
    return None


def _int_list(value) -> str | None:
    if not all(isinstance(x, int) and not isinstance(x, bool) for x in value):
        return "must be a list of integers"
    return None


# Every key of the original configs, plus a few new ones (marked "new").
SCHEMA: dict[str, Field] = {
    # --- experiment and data
    "experiment_name": Field(str, help="MLflow experiment and checkpoint-name prefix (the benchmark name)"),
    "num_classes": Field(int, check=_positive, help="1: binary (sigmoid, BCE); >1: softmax, cross-entropy"),
    "class_names": Field(list, help="one name per class (metric names); binary: one name"),
    "class_weights": Field(list, None, nullable=True, help="cross-entropy weights per class (num_classes > 1)"),
    "data_root": Field(str, None, nullable=True, help=f"new: base of relative data paths (default ${DATA_ROOT_ENV})"),
    "data_dir": Field(str, None, nullable=True, help="holds train/{images,masks} and optionally valid/"),
    "model_dir": Field(str, "models/", help="where checkpoints are written"),
    "logging": Field(bool, True, help="track the run with MLflow"),
    "log_model": Field(bool, True, help="new: at the end, log the model to the run (mlflow.pytorch.log_model, with "
                       "its signature) so the MLflow UI lists it"),
    "tracking_dir": Field(str, None, nullable=True, help="new: local MLflow store (MLFLOW_TRACKING_URI wins)"),
    "num_save_checkpoints": Field(int, 1, check=_non_negative, help="evenly spaced checkpoints; 0 = never save"),
    "resume": Field(str, "", help="'' = start fresh, 'auto' = this run's resume state in model_dir (a fresh "
                    "start when there is none), or a checkpoint path"),
    "checkpoint_iters": Field(int, 50, check=_non_negative,
                              help="steps between resumable states in model_dir (and one on SIGTERM); "
                                   "0 = SIGTERM only"),
    "restart_training": Field(bool, False, help="with resume: load only the weights, restart optimizer/schedule"),
    # --- model
    "bsz": Field(int, 16, check=_positive, help="batch size (per process under torchrun)"),
    "jobs": Field(int, 4, check=_non_negative, help="DataLoader workers"),
    "finetune_layer": Field(str, "none", choices=FINETUNE_LAYERS, help="train the encoder from this layer on"),
    "unfreeze_encoder_bn": Field(bool, False, help="train (and keep in train mode) the encoder's BatchNorm"),
    "encoder": Field(str, "resnet50", choices=ENCODERS, help="U-Net encoder (the paper's: resnet50)"),
    "pretraining": Field(
        str, "cellemnet_mocov2", help=f"one of {list(NAMED_PRETRAININGS)} or the path of a weights file"
    ),
    # --- optimisation
    "lr": Field(float, 0.003, check=_positive),
    "encoder_lr_scale": Field(float, 1.0, check=_positive,
                              help="new: the trainable encoder layers' lr is lr x this (e.g. 0.1 for a "
                                   "pretrained encoder trained end to end)"),
    "precise_bn": Field(int, 0, check=_non_negative,
                        help="new: at the end, recompute the running statistics of the BatchNorm layers that "
                             "trained over up to this many training images (0 = keep the EMA)"),
    "wd": Field(float, 0.1, check=_non_negative),
    "optim": Field(str, "AdamW", choices=("AdamW", "SGD")),
    "lr_policy": Field(str, "OneCycle", choices=("OneCycle", "Poly", "MultiStep")),
    "momentum": Field(float, 0.9, check=_non_negative, help="SGD momentum"),
    "iters": Field(int, 1000, check=_positive, help="iterations (OneCycle, Poly)"),
    "power": Field(float, 0.9, help="Poly exponent"),
    "epochs": Field(int, 10, check=_positive, help="epochs (MultiStep)"),
    "lr_decay_epochs": Field(list, [6, 8], check=_int_list, help="MultiStep milestones (epochs)"),
    "norms": Field(dict, {"mean": EM_MEAN, "std": EM_STD}, check=_check_norms, help="used for random_init only"),
    "metrics": Field(list, ["IoU"], help="training metrics (IoU)"),
    "num_prints": Field(int, 10, check=_positive, help="how many times train/valid metrics are printed and logged"),
    "augmentations": Field(list, [], check=_check_augmentations, help="albumentations pipeline (list of {aug: ...})"),
    "seed": Field(int, 42, help="new: seeds the model init, data order and augmentation"),
    "device": Field(str, "auto", help="new: auto, cpu or cuda"),
    "amp": Field(bool, True, help="new: mixed precision on the GPU (ignored on the CPU)"),
    # --- 2D inference
    "test_dir2d": Field(str, None, nullable=True, help="2D test set: images/ and masks/"),
    "threshold2d": Field(float, 0.5, check=_probability),
    "instance_match2d": Field((bool, list), False, help="keep predicted components touching ground truth"),
    "eval_classes2d": Field(list, None, nullable=True, check=_int_list, help="default: 1..num_classes-1 (or [1])"),
    "save_dir2d": Field(str, None, nullable=True, help="predictions + IoU CSV (default: beside the checkpoint)"),
    "tile_size2d": Field(int, 1024, check=_non_negative, help="new: tile larger images (0 = whole images)"),
    "tile_overlap2d": Field(int, 128, check=_non_negative, help="new: tile overlap in pixels (blended)"),
    # --- 3D inference
    "test_dir3d": Field(str, None, nullable=True, help="3D test set: images/ and masks/ volumes"),
    "mode3d": Field((str, list), "stack", help="stack (xy slices) or orthoplane (xy, xz, yz averaged)"),
    "threshold3d": Field(float, 0.5, check=_probability),
    "eval_classes3d": Field(list, None, nullable=True, check=_int_list),
    "mask_prediction3d": Field((bool, list), False, help="zero predictions where the ground truth is 0"),
    "save_dir3d": Field(str, None, nullable=True),
    "batch3d": Field(int, 16, check=_positive, help="new: slices per forward pass"),
    # --- inference in general
    "save_overlays": Field(int, 4, check=_non_negative, help="new: overlay PNGs written and logged"),
    # --- mixed (all_mito): parallel lists, one entry per sub-benchmark
    "test_dir": Field(str, None, nullable=True, help="all_mito: holds 2d/{name}/ and 3d/{name}/"),
    "benchmark_names": Field(list, None, nullable=True),
    "benchmark_dimensions": Field(list, None, nullable=True),
    "eval_classes": Field(list, None, nullable=True, check=_int_list),
    "thresholds": Field(list, None, nullable=True),
    "save_dirs": Field(list, None, nullable=True),
}


def configured_data_root(value: str | os.PathLike | None) -> Path | None:
    """The data root: `value` when given, else $CELLEMNET_DATA_ROOT, else None (relative paths then stay relative
    to the current folder). setup.layout.resolve_data_root is the variant that requires one."""
    root = value if value not in (None, "") else os.environ.get(DATA_ROOT_ENV)
    return Path(os.path.expanduser(str(root))) if root else None


def _resolve_paths(config: dict[str, Any]) -> dict[str, Any]:
    root = configured_data_root(config.get("data_root"))
    out = dict(config)
    for key in DATA_PATH_KEYS:
        value = out.get(key)
        if isinstance(value, str) and value:
            p = Path(os.path.expanduser(value))
            if not p.is_absolute() and root is not None:
                p = root / p
            out[key] = str(p)
    return out


def _require_dir(config: Mapping[str, Any], key: str, source: str, needs: Iterable[str] = ()) -> None:
    value = config.get(key)
    if not value:
        raise ConfigError(f"{source}: key '{key}' is needed for this command but not set")
    p = Path(value)
    if not p.is_dir():
        hint = "" if Path(value).is_absolute() and config.get("data_root") else (
            f" (relative paths are resolved against data_root or ${DATA_ROOT_ENV})"
        )
        raise ConfigError(f"{source}: key '{key}': directory not found: {p}{hint}")
    for sub in needs:
        if not (p / sub).is_dir():
            raise ConfigError(f"{source}: key '{key}': {p} has no '{sub}' folder")


def _check_consistency(cfg: dict[str, Any], source: str) -> None:
    n = cfg["num_classes"]
    if len(cfg["class_names"]) != n:
        raise ConfigError(f"{source}: key 'class_names' has {len(cfg['class_names'])} names for num_classes={n}")
    if cfg["class_weights"] is not None:
        if n == 1:
            raise ConfigError(f"{source}: key 'class_weights' applies only to num_classes > 1")
        if len(cfg["class_weights"]) != n:
            raise ConfigError(f"{source}: key 'class_weights' needs {n} values, got {len(cfg['class_weights'])}")
    top = max(n - 1, 1)
    for key in ("eval_classes2d", "eval_classes3d", "eval_classes"):
        for c in cfg[key] or []:
            if not 0 <= c <= top:
                raise ConfigError(f"{source}: key '{key}': class {c} is outside 0..{top}")
    for key in ("mode3d",):
        values = cfg[key] if isinstance(cfg[key], list) else [cfg[key]]
        for v in values:
            if v not in MODES_3D:
                raise ConfigError(f"{source}: key '{key}' must be one of {list(MODES_3D)}, got {v!r}")
    p = cfg["pretraining"]
    looks_like_path = "/" in p or os.sep in p or Path(p).suffix in (".pth", ".tar", ".pt")
    if p not in NAMED_PRETRAININGS and not looks_like_path:
        close = difflib.get_close_matches(p, NAMED_PRETRAININGS, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(
            f"{source}: key 'pretraining': '{p}' is neither one of {list(NAMED_PRETRAININGS)} nor a file path{hint}"
        )
    if looks_like_path and not Path(p).is_file():
        raise ConfigError(f"{source}: key 'pretraining': weights file not found: {p}")
    if cfg["resume"] not in ("", "auto") and not Path(cfg["resume"]).is_file():
        raise ConfigError(f"{source}: key 'resume': checkpoint not found: {cfg['resume']}")
    if cfg["benchmark_names"] is not None:
        m = len(cfg["benchmark_names"])
        for key in ("benchmark_dimensions", "eval_classes", "thresholds"):
            if cfg[key] is None or len(cfg[key]) != m:
                raise ConfigError(f"{source}: key '{key}' must list one value per benchmark_names entry ({m})")
        for key in ("instance_match2d", "mode3d", "mask_prediction3d", "save_dirs"):
            if isinstance(cfg[key], list) and len(cfg[key]) != m:
                raise ConfigError(f"{source}: key '{key}' must list one value per benchmark_names entry ({m})")
        for d in cfg["benchmark_dimensions"]:
            if d not in ("2d", "3d"):
                raise ConfigError(f"{source}: key 'benchmark_dimensions': '{d}' must be '2d' or '3d'")


STAGES = ("train", "infer2d", "infer3d", "mixed", "none")


def load_eval_config(
    path: str | os.PathLike | None,
    overrides: Iterable[str] | Mapping[str, Any] = (),
    stage: str = "none",
) -> dict[str, Any]:
    """Read, override, resolve and validate an evaluation config; check the folders `stage` needs.

    Raises ConfigError naming the file and key for unknown keys, wrong types, missing folders,
    inconsistent class lists, unknown augmentations or a misspelled pretraining name.
    """
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}")
    source = str(path) if path is not None else "config"
    cfg = load_config(path, SCHEMA, overrides, check_paths=False)  # the project's one loader
    cfg = _resolve_paths(cfg)
    _check_consistency(cfg, source)
    # The augmentation list is built once here so that a typo fails before any training starts.

    try:
        build_train_transforms(cfg["augmentations"], norms=Norms.parse(cfg["norms"]).as_dict())
    except ConfigError as exc:
        raise ConfigError(f"{source}: key 'augmentations': {exc}") from None
    if stage == "train":
        _require_dir(cfg, "data_dir", source, needs=("train/images", "train/masks"))
        warning = training_scale_warning(cfg, source)
        if warning:
            print(f"WARNING: {warning}", file=sys.stderr, flush=True)
    elif stage == "infer2d":
        _require_dir(cfg, "test_dir2d", source, needs=("images",))
    elif stage == "infer3d":
        _require_dir(cfg, "test_dir3d", source, needs=("images",))
    elif stage == "mixed":
        if not cfg["benchmark_names"]:
            raise ConfigError(f"{source}: key 'benchmark_names' is needed for mixed inference")
        _require_dir(cfg, "test_dir", source)
    return cfg


def training_scale_warning(cfg: Mapping[str, Any], source: str = "config") -> str | None:
    """A one-line warning when the training augmentation changes the scale systematically (see
    cellemnet.evaluation.augment.scale_warning), judged on the first training image's size (header only)."""
    if not cfg["augmentations"]:
        return None
    first = find_pairs(Path(cfg["data_dir"]) / "train", require_masks=False)[0].image
    return scale_warning(cfg["augmentations"], image_size(first), source=source)


def default_eval_classes(num_classes: int) -> list[int]:
    """Background is never scored: [1] for binary, 1..C-1 for multi-class."""
    return [1] if num_classes == 1 else list(range(1, num_classes))
