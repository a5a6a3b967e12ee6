"""Where the U-Net encoder's starting weights come from (the config's `pretraining` key).

* `random_init`: random encoder; channels and normalisation from the config's `norms`.
* `imagenet_supervised`: smp's ImageNet ResNet of the config's `encoder` (3 channels, ImageNet norms). Needs the
  network once (Hugging Face hub); offline it is a clear error.
* `cellemnet_mocov2` / `cellemnet_swav`: the published CEM500K (MoCoV2) / CEM1.5M (SwAV) weights from Zenodo,
  kept in the torch hub cache (`$TORCH_HOME/hub/checkpoints/`). A cached file is used without the network;
  offline without the file, the error names the file and where to put it.
* a path: any file the pretraining stage writes (raw MoCoV2/SwAV checkpoints, exported encoders), the
  published files, or a fine-tuned U-Net checkpoint from this stage. The layout is detected by
  `cellemnet.encoder.encoder_from_checkpoint`.

Loading is strict: every encoder key must match, otherwise it is an error (never a silently random encoder). The
file's arch (resnet18/34/50, `cellemnet.encoder.encoder_arch`) must be the config's `encoder`: a
mismatch is a one-line ConfigError naming both. The published files hold ResNet-50s.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Mapping

from cellemnet.constants import IMAGENET_NORMS
from cellemnet.encoder import Norms, encoder_from_checkpoint, load_checkpoint_file
from cellemnet.errors import ConfigError, InputError

PUBLISHED = {
    "cellemnet_mocov2": (
        "cem500k_mocov2_resnet50_200ep.pth.tar",
        "https://zenodo.org/record/6453140/files/cem500k_mocov2_resnet50_200ep.pth.tar?download=1",
    ),
    "cellemnet_swav": (
        "cem1.5m_swav_resnet50_200ep_balanced.pth.tar",
        "https://zenodo.org/record/6453160/files/cem1.5m_swav_resnet50_200ep_balanced.pth.tar?download=1",
    ),
}


@dataclasses.dataclass
class EncoderWeights:
    """What the U-Net needs from a pretraining choice."""

    name: str  # short label used in checkpoint names
    in_channels: int
    norms: dict[str, list[float]]  # {"mean": [...], "std": [...]}, one entry per channel
    state_dict: dict[str, Any] | None = None  # torchvision ResNet names without fc
    smp_weights: str | None = None  # "imagenet" for smp's own weights
    arch: str | None = None  # the ResNet the weights are for; None: any (random init)


def hub_checkpoint_dir() -> Path:
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def published_weights_path(name: str) -> Path:
    """The cached file for a published weights name, downloading it when missing (clear error offline)."""
    import torch

    filename, url = PUBLISHED[name]
    target = hub_checkpoint_dir() / filename
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(target), progress=True)
    except Exception as exc:  # URLError, HTTPError, socket errors: all mean "could not download"
        raise ConfigError(
            f"pretraining '{name}': could not download {filename} ({exc.__class__.__name__}). "
            f"Download {url.split('?')[0]} on a machine with internet and put it at {target} "
            f"(or set pretraining to the file's path)"
        ) from None
    return target


def checkpoint_label(pretraining: str) -> str:
    """The pretraining part of a checkpoint name: the name itself, or a file's parent folder (as the original)."""
    if pretraining in ("random_init", "imagenet_supervised", *PUBLISHED):
        return pretraining
    p = Path(pretraining)
    parent = p.resolve().parent.name
    return parent or p.stem


# The names of fine-tuning checkpoints, here (no torch import) so that the Snakefile derives them as finetune.py does.
def _run_prefix(config: Mapping[str, Any]) -> str:
    return f"{config['experiment_name']}-{checkpoint_label(config['pretraining'])}_ft_{config['finetune_layer']}"


def checkpoint_name(config: Mapping[str, Any], step: int, total: int) -> str:
    return f"{_run_prefix(config)}_epoch{step}_of_{total}.pth"


def resume_state_name(config: Mapping[str, Any]) -> str:
    """The resumable state of a run in progress (written every `checkpoint_iters` steps and on SIGTERM, deleted
    when the run finishes); apart from the checkpoints the user asked for."""
    return f"{_run_prefix(config)}_resume.pth"


def metrics_log_name(config: Mapping[str, Any]) -> str:
    """The run's metrics, one JSON line per logged step (train and validation loss and IoU)."""
    return f"{_run_prefix(config)}_metrics.jsonl"


def total_steps(config: Mapping[str, Any]) -> int:
    return config["epochs"] if config["lr_policy"] == "MultiStep" else config["iters"]


def weights_from_checkpoint(ckpt: Mapping[str, Any], name: str, source: str) -> EncoderWeights:
    try:
        enc = encoder_from_checkpoint(ckpt)
    except InputError as exc:
        raise InputError(f"{source}: {exc}") from None
    return EncoderWeights(
        name=name, in_channels=int(enc["in_channels"]), norms=Norms.parse(enc["norms"]).as_dict(),
        state_dict=enc["state_dict"], arch=enc["arch"],
    )


def check_encoder_arch(weights: EncoderWeights, encoder: str | None, source: str) -> EncoderWeights:
    """The weights, when they are for the config's `encoder` (None: any); else a ConfigError naming both archs."""
    if encoder is not None and weights.arch is not None and weights.arch != encoder:
        raise ConfigError(
            f"key 'encoder' is {encoder} but pretraining {source} holds a {weights.arch} encoder "
            f"(set encoder={weights.arch}, or use a {encoder} file)"
        )
    return weights


def resolve_pretraining(pretraining: str, config_norms: Mapping[str, Any],
                        encoder: str | None = None) -> EncoderWeights:
    """Turn the config's `pretraining` value into weights, channels and norms.

    encoder: the U-Net's encoder (the config's `encoder` key); weights for another arch are a ConfigError naming
    both. None: no check here (build_unet checks again against the encoder it builds).
    """
    if pretraining == "random_init":
        norms = Norms.parse(config_norms).as_dict()
        return EncoderWeights("random_init", len(norms["mean"]), norms)
    if pretraining == "imagenet_supervised":
        return EncoderWeights("imagenet_supervised", 3, {k: list(v) for k, v in IMAGENET_NORMS.items()},
                              smp_weights="imagenet", arch=encoder)
    if pretraining in PUBLISHED:
        if encoder not in (None, "resnet50"):  # fail before a download of weights that cannot be used
            raise ConfigError(f"key 'encoder' is {encoder} but pretraining '{pretraining}' is a resnet50 encoder "
                              f"(set encoder=resnet50)")
        path = published_weights_path(pretraining)
        return check_encoder_arch(weights_from_file(path, name=pretraining), encoder, f"'{pretraining}'")
    path = Path(os.path.expanduser(pretraining))
    if not path.is_file():
        raise ConfigError(f"pretraining: weights file not found: {path}")
    return check_encoder_arch(weights_from_file(path, name=checkpoint_label(str(path))), encoder, str(path))


def weights_from_file(path: str | os.PathLike, name: str) -> EncoderWeights:
    ckpt = load_checkpoint_file(path)
    return weights_from_checkpoint(ckpt, name=name, source=str(path))


def load_encoder_strict(model, weights: EncoderWeights) -> None:
    """Copy weights into model.encoder; any missing, unexpected or mis-shaped key is an error."""
    if weights.state_dict is None:
        return
    target = model.encoder.state_dict()
    missing = [k for k in target if k not in weights.state_dict]
    unexpected = [k for k in weights.state_dict if k not in target]
    shapes = [
        f"{k} {tuple(v.shape)} vs {tuple(target[k].shape)}"
        for k, v in weights.state_dict.items()
        if k in target and tuple(v.shape) != tuple(target[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (first '{missing[0]}')")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (first '{unexpected[0]}')")
        if shapes:
            parts.append(f"{len(shapes)} with other shapes (first {shapes[0]})")
        raise InputError(f"pretraining '{weights.name}': encoder weights do not match the U-Net: " + "; ".join(parts))
    model.encoder.load_state_dict(weights.state_dict, strict=True)


def imagenet_offline_error(exc: Exception) -> ConfigError:
    return ConfigError(
        "pretraining 'imagenet_supervised': could not get smp's ImageNet ResNet weights "
        f"({exc.__class__.__name__}); they come from the Hugging Face hub (smp-hub/<encoder>.imagenet). "
        "Run once with internet (unset HF_HUB_OFFLINE) to cache them in ~/.cache/huggingface, or use another "
        "pretraining"
    )
