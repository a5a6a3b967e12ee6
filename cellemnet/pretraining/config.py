"""Config schemas of the two pretraining methods: one shared part plus method-specific keys.

Key names follow the original configs where they exist (data_path, model_dir, arch, workers, epochs, ...;
SwAV's nmb_prototypes, epsilon, ...). Differences, chosen so that both methods share one schema: SwAV's
`base_lr` is `lr`, `wd` is `weight_decay`, `model_path` is `model_dir`, `checkpoint_freq` is `save_freq`,
`use_fp16` is `amp`. No torch import here: configs are validated before anything heavy is loaded.
"""
from __future__ import annotations

import os
from typing import Any, Iterable

from cellemnet.config import PATH_DIR, PATH_OUT, Field, load_config
from cellemnet.constants import EM_MEAN, EM_STD
from cellemnet.errors import ConfigError

ARCHS = ("resnet50", "resnet18", "resnet34")  # resnet50 is the paper's; the small ones are for tests and smoke runs


def _positive(value) -> str | None:
    return None if value > 0 else "must be > 0"


def _non_negative(value) -> str | None:
    return None if value >= 0 else "must be >= 0"


def _norms_check(value) -> str | None:
    if set(value) != {"mean", "std"}:
        return "must be a mapping with exactly the keys mean and std"
    for key in ("mean", "std"):
        v = value[key]
        if isinstance(v, (int, float)):
            v = [v]
        if not (isinstance(v, list) and len(v) == 1 and isinstance(v[0], (int, float))):
            return f"'{key}' must be one number (one input channel), got {value[key]!r}"
    if float(value["std"][0] if isinstance(value["std"], list) else value["std"]) <= 0:
        return "'std' must be > 0"
    return None


def _resume_check(value) -> str | None:
    if value in ("", "auto") or os.path.isfile(os.path.expanduser(value)):
        return None
    return f"must be '', 'auto' or an existing checkpoint file, got {value!r}"


def _int_list(n: int | None = None):
    def check(value) -> str | None:
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return f"must be a list of integers, got {value!r}"
        if n is not None and len(value) != n:
            return f"must have {n} entries, got {len(value)}"
        return None

    return check


def _number_list(value) -> str | None:
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return f"must be a list of numbers, got {value!r}"
    return None


COMMON_SCHEMA: dict[str, Field] = {
    "experiment_name": Field(str, "CellEMNet_pretraining", "MLflow experiment"),
    "data_path": Field(str, help="curated patches: folders of TIFF/PNG (any depth) or HDF5 shards", path=PATH_DIR),
    "model_dir": Field(str, "models", "checkpoints, data index and config copy go here", path=PATH_OUT),
    "arch": Field(str, "resnet50", "encoder (torchvision ResNet with a 1-channel conv1)", choices=ARCHS),
    "workers": Field(int, 4, "DataLoader workers per process", check=_non_negative),
    "epochs": Field(int, 200, "training epochs", check=_positive),
    "save_freq": Field(int, 20, "keep a numbered checkpoint every save_freq epochs", check=_positive),
    "print_freq": Field(int, 10, "log metrics every print_freq iterations", check=_positive),
    "batch_size": Field(int, 128, "GLOBAL batch, split evenly over all processes", check=_positive),
    "lr": Field(float, 0.015, "base learning rate (SwAV: base_lr)", check=_positive),
    "momentum": Field(float, 0.9, "SGD momentum"),
    "weight_decay": Field(float, 1e-4, "weight decay (SwAV: wd, applied through LARC)", check=_non_negative),
    "resume": Field(str, "", "'' = fresh, 'auto' = newest checkpoint in model_dir, or a checkpoint path",
                    nullable=True, check=_resume_check),
    "logging": Field(bool, True, "MLflow tracking on rank 0"),
    "tracking_dir": Field(str, None, "MLflow store folder (default ./mlflow_store; MLFLOW_TRACKING_URI wins)",
                          nullable=True, path=PATH_OUT),
    "norms": Field(dict, {"mean": [EM_MEAN], "std": [EM_STD]}, "input normalisation, one channel",
                   check=_norms_check),
    "seed": Field(int, 1447, "seed of model init, sampler and augmentations"),
    "weight_gamma": Field(float, 0.5, "source balancing: each patch of a source with n patches gets weight "
                          "(1/n)^gamma; null = plain shuffle", nullable=True, check=_non_negative),
    "rebuild_index": Field(bool, False, "re-scan data_path even if the cached file index looks current"),
    "device": Field(str, "auto", "auto, cpu or cuda"),
    "amp": Field(bool, True, "mixed precision on GPUs (bf16, or fp16 with a grad scaler); ignored on the CPU"),
    "channels_last": Field(bool, True, "channels_last memory format on GPUs"),
    "checkpoint_iters": Field(int, 1000, "also write current.pth every N iterations mid-epoch (0 = off)",
                              check=_non_negative),
    "iters_per_epoch": Field(int, None, "cap on iterations per epoch (smoke tests); null = whole epoch",
                             nullable=True, check=_positive),
    "lr_scaling": Field(str, "none", "none: use lr as given; linear: lr * batch_size / lr_reference_batch "
                        "(Goyal et al. 2017)", choices=("none", "linear")),
    "lr_reference_batch": Field(int, 128, "global batch that lr is meant for when lr_scaling is linear",
                                check=_positive),
    "allow_unsafe_ssl": Field(bool, False, "train even when a setting cannot work on this data (queue or "
                              "prototypes too large): a loud warning instead of an error"),
    "health_every": Field(int, 1, "measure the encoder's health every N epochs (0 = at the start and the end "
                          "only)", check=_non_negative),
    "health_patches": Field(int, 256, "patches in the fixed health set (two views each)", check=_positive),
    "probe_data": Field(str, None, "labeled benchmark folder (train/, test/ with images and masks) for an online "
                        "encoder probe; null = none", nullable=True, path=PATH_DIR),
    "probe_every": Field(int, 0, "run the online probe every N epochs (0 = at the start and the end only)",
                         check=_non_negative),
}

MOCOV2_SCHEMA: dict[str, Field] = {
    **COMMON_SCHEMA,
    "experiment_name": Field(str, "MoCo_CEM", "MLflow experiment"),
    "crop_size": Field(int, 224, "size of both views", check=_positive),
    "schedule": Field(list, [120, 160], "epochs at which lr is multiplied by 0.1 (when cos is false)",
                      check=_int_list()),
    "cos": Field(bool, False, "cosine lr schedule instead of steps"),
    "moco_dim": Field(int, 128, "feature dimension", check=_positive),
    "moco_k": Field(int, 65536, "queue length (negatives)", check=_positive),
    "moco_m": Field(float, 0.999, "key encoder EMA momentum (with moco_m_schedule cosine: its start value)",
                    check=lambda v: None if 0 <= v < 1 else "must be in [0, 1)"),
    "moco_m_schedule": Field(str, "constant", "constant, or cosine from moco_m to 1 over the run (for short "
                             "runs: the key encoder then moves early and settles late)",
                             choices=("constant", "cosine")),
    "moco_t": Field(float, 0.2, "softmax temperature", check=_positive),
    "mlp": Field(bool, True, "MLP projection head (MoCo v2)"),
    "mlp_bn": Field(bool, False, "BatchNorm in the MLP head (SimCLR / MoCo v3 style; for short runs)"),
    "bn_splits": Field(int, 4, "one process only: encode the shuffled key batch in this many chunks (shuffled BN "
                       "without several GPUs); 1 = off", check=_positive),
    "crop_scale": Field(list, [0.2, 1.0], "RandomResizedCrop area range of both views", check=_number_list),
    "standardize_views": Field(bool, False, "standardise each view by its own mean and std instead of the fixed "
                               "norms (removes the brightness shortcut of instance discrimination)"),
    "warmup_epochs": Field(int, 0, "linear lr warmup over this many epochs (per iteration)", check=_non_negative),
    "color_jitter": Field(float, 0.4, "brightness and contrast jitter strength of every view (the paper's 0.4; "
                          "0 = none, for short runs: see pretraining/README.md)", check=_non_negative),
}

SWAV_SCHEMA: dict[str, Field] = {
    **COMMON_SCHEMA,
    "experiment_name": Field(str, "SWaV_CEM", "MLflow experiment"),
    "epochs": Field(int, 200, "training epochs", check=_positive),
    "batch_size": Field(int, 64, "GLOBAL batch, split evenly over all processes", check=_positive),
    "lr": Field(float, 0.6, "base learning rate after warmup (base_lr)", check=_positive),
    "lr_reference_batch": Field(int, 64, "global batch that lr is meant for when lr_scaling is linear",
                                check=_positive),
    "final_lr": Field(float, 0.0006, "learning rate at the end of the cosine", check=_non_negative),
    "standardize_views": Field(bool, False, "standardise each view by its own mean and std instead of the fixed "
                               "norms (removes the brightness shortcut of instance discrimination)"),
    "warmup_epochs": Field(int, 0, "linear warmup epochs", check=_non_negative),
    "color_jitter": Field(float, 0.4, "brightness and contrast jitter strength of every view (the paper's 0.4; "
                          "0 = none, for short runs: see pretraining/README.md)", check=_non_negative),
    "start_warmup": Field(float, 0.0, "learning rate at the start of the warmup", check=_non_negative),
    "weight_decay": Field(float, 1e-6, "weight decay (wd), applied through LARC", check=_non_negative),
    "save_freq": Field(int, 25, "keep a numbered checkpoint every save_freq epochs", check=_positive),
    "print_freq": Field(int, 500, "log metrics every print_freq iterations", check=_positive),
    "trust_coefficient": Field(float, 0.001, "LARC trust coefficient", check=_positive),
    "hidden_mlp": Field(int, 2048, "projection head hidden width (0 = one linear layer)", check=_non_negative),
    "feat_dim": Field(int, 128, "embedding dimension", check=_positive),
    "nmb_prototypes": Field(int, 3000, "number of prototypes", check=_positive),
    "temperature": Field(float, 0.1, "softmax temperature", check=_positive),
    "epsilon": Field(float, 0.05, "Sinkhorn entropic regularisation", check=_positive),
    "sinkhorn_iterations": Field(int, 3, "Sinkhorn iterations", check=_positive),
    "nmb_crops": Field(list, [2, 6], "number of crops per resolution", check=_int_list()),
    "size_crops": Field(list, [224, 96], "crop size per resolution", check=_int_list()),
    "min_scale_crops": Field(list, [0.14, 0.05], "RandomResizedCrop lower scale per resolution",
                             check=_number_list),
    "max_scale_crops": Field(list, [1.0, 0.14], "RandomResizedCrop upper scale per resolution",
                             check=_number_list),
    "crops_for_assign": Field(list, [0, 1], "crops whose codes are computed", check=_int_list()),
    "queue_length": Field(int, 3840, "feature queue length over all processes (0 = none)", check=_non_negative),
    "epoch_queue_starts": Field(int, 15, "epoch at which the queue is created", check=_non_negative),
    "freeze_prototypes_niters": Field(int, 5005, "iterations during which prototypes get no update",
                                      check=_non_negative),
    "sync_bn": Field(bool, True, "SyncBatchNorm across GPUs (never on the CPU, where it does not run)"),
}

SCHEMAS = {"mocov2": MOCOV2_SCHEMA, "swav": SWAV_SCHEMA}


def check_consistency(cfg: dict[str, Any], method: str) -> None:
    """Cross-key checks the per-key schema cannot express."""
    if method == "swav":
        n = len(cfg["nmb_crops"])
        for key in ("size_crops", "min_scale_crops", "max_scale_crops"):
            if len(cfg[key]) != n:
                raise ConfigError(f"key '{key}' needs {n} entries, one per entry of nmb_crops")
        total = sum(cfg["nmb_crops"])
        if any(not 0 <= c < total for c in cfg["crops_for_assign"]):
            raise ConfigError(f"key 'crops_for_assign' must index crops 0..{total - 1}")
        for lo, hi in zip(cfg["min_scale_crops"], cfg["max_scale_crops"]):
            if not 0 < lo <= hi <= 1:
                raise ConfigError("min_scale_crops/max_scale_crops must satisfy 0 < min <= max <= 1")


def load_pretraining_config(
    path: str | os.PathLike | None, method: str, overrides: Iterable[str] = (), check_paths: bool = True
) -> dict[str, Any]:
    """Load and validate a config of `method` ("mocov2" or "swav"); raises ConfigError naming file and key."""
    if method not in SCHEMAS:
        raise ConfigError(f"unknown pretraining method {method!r}")
    cfg = load_config(path, SCHEMAS[method], overrides, check_paths=check_paths)
    if cfg["resume"] is None:
        cfg["resume"] = ""
    check_consistency(cfg, method)
    return cfg
