"""Turn a pretraining checkpoint into a plain ResNet-50 encoder file that evaluation loads.

Exported file (torch.save of a dict of tensors and plain types; load with weights_only=True):
    {"state_dict": torchvision ResNet-50 parameter/buffer names without `fc.*`, conv1 of shape [64, 1, 7, 7],
     "norms": [mean, std], "method": "mocov2" | "swav", "in_channels": 1}

Accepted inputs: this project's MoCoV2/SwAV training checkpoints, the published CEM500K MoCoV2 file
(keys `module.encoder_q.*`), the published CEM1.5M SwAV file (keys `module.*` plus `projection_head`/`prototypes`),
and an already exported file.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from cellemnet.constants import EM_MEAN, EM_STD
from cellemnet.errors import InputError

METHODS = ("mocov2", "swav")
# Where the ResNet trunk lives inside the known layouts, tried in this order (after stripping DDP's `module.`).
_TRUNK_PREFIXES = ("encoder_q.", "encoder.", "backbone.", "")
# Head parameters that are not part of the encoder.
_HEAD_PREFIXES = ("fc.", "projection_head.", "prototypes")


def resnet50_encoder_keys() -> list[str]:
    """State-dict names of torchvision's ResNet-50 without fc (the exported layout)."""
    import torchvision

    model = torchvision.models.resnet50(weights=None)
    return [k for k in model.state_dict() if not k.startswith("fc.")]


def _strip_module(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    if state_dict and all(k.startswith("module.") for k in state_dict):
        return {k[len("module."):]: v for k, v in state_dict.items()}
    return dict(state_dict)


def _find_trunk_prefix(state_dict: Mapping[str, Any]) -> str:
    for prefix in _TRUNK_PREFIXES:
        if f"{prefix}conv1.weight" in state_dict and f"{prefix}layer4.0.conv1.weight" in state_dict:
            return prefix
    raise InputError("checkpoint holds no ResNet encoder (no '[module.][encoder_q.|encoder.]conv1.weight' key)")


def _guess_method(state_dict: Mapping[str, Any], prefix: str) -> str:
    if prefix == "encoder_q.":
        return "mocov2"
    if any(k.startswith(("prototypes", "projection_head")) for k in state_dict):
        return "swav"
    raise InputError("cannot tell whether the checkpoint is MoCoV2 or SwAV (no 'method' key, no encoder_q/prototypes)")


def normalise_norms(norms: Any) -> list[float]:
    """[mean, std] as two floats from any of the layouts seen: [m, s], [[m], [s]], {"mean": [m], "std": [s]}."""
    if norms is None:
        return [float(EM_MEAN), float(EM_STD)]
    if isinstance(norms, Mapping):
        norms = [norms["mean"], norms["std"]]
    out = []
    for value in list(norms)[:2]:
        if hasattr(value, "tolist"):
            value = value.tolist()
        if isinstance(value, (list, tuple)):
            if len(value) != 1:
                raise InputError(f"norms {norms!r} describe {len(value)} channels; a 1-channel encoder needs one")
            value = value[0]
        out.append(float(value))
    if len(out) != 2:
        raise InputError(f"norms {norms!r} are not [mean, std]")
    return out


def encoder_from_checkpoint(ckpt: Mapping[str, Any]) -> dict[str, Any]:
    """The exported encoder dict (see module doc) from a loaded checkpoint dict of any accepted layout."""
    import torch

    if "state_dict" not in ckpt:
        raise InputError("checkpoint has no 'state_dict' key")
    state_dict = _strip_module(ckpt["state_dict"])
    prefix = _find_trunk_prefix(state_dict)
    method = ckpt.get("method") or _guess_method(state_dict, prefix)
    if method not in METHODS:
        raise InputError(f"checkpoint method {method!r} is not one of {list(METHODS)}")
    wanted = resnet50_encoder_keys()
    trunk = {
        k[len(prefix):]: v
        for k, v in state_dict.items()
        if k.startswith(prefix) and not k[len(prefix):].startswith(_HEAD_PREFIXES)
    }
    out: dict[str, Any] = {}
    missing = []
    for key in wanted:
        if key in trunk:
            out[key] = trunk[key].detach().clone().cpu()
        elif key.endswith("num_batches_tracked"):
            out[key] = torch.tensor(0, dtype=torch.long)  # some layouts drop this counter; it carries no weights
        else:
            missing.append(key)
    if missing:
        raise InputError(
            f"checkpoint encoder is not a ResNet-50: {len(missing)} parameters missing (first: '{prefix}{missing[0]}')"
        )
    conv1 = out["conv1.weight"]
    if tuple(conv1.shape) != (64, 1, 7, 7):
        raise InputError(f"conv1.weight has shape {tuple(conv1.shape)}; a 1-channel ResNet-50 needs (64, 1, 7, 7)")
    return {
        "state_dict": out,
        "norms": normalise_norms(ckpt.get("norms")),
        "method": str(method),
        "in_channels": 1,
    }


def load_checkpoint_file(path: str | os.PathLike) -> dict[str, Any]:
    """torch.load with weights_only=True and a clear error naming the file."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types; all mean "not a usable checkpoint"
        raise InputError(f"{path}: not a loadable checkpoint ({exc.__class__.__name__}: {str(exc)[:200]})") from None
    if not isinstance(ckpt, dict):
        raise InputError(f"{path}: checkpoint is a {type(ckpt).__name__}, expected a dict")
    return ckpt


def export_encoder(checkpoint_path: str | os.PathLike, out_path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint, write the exported encoder atomically to out_path, return the exported dict."""
    import torch

    from cellemnet.io import atomic_path

    ckpt = load_checkpoint_file(checkpoint_path)
    try:
        encoder = encoder_from_checkpoint(ckpt)
    except InputError as exc:
        raise InputError(f"{checkpoint_path}: {exc}") from None
    with atomic_path(out_path) as tmp:
        torch.save(encoder, tmp)
    return encoder


def load_encoder_into_resnet50(encoder: Mapping[str, Any]):
    """A torchvision ResNet-50 with a 1-channel conv1, no fc, and the exported weights (strict load)."""
    import torch
    import torchvision

    model = torchvision.models.resnet50(weights=None)
    model.conv1 = torch.nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    model.fc = torch.nn.Identity()
    model.load_state_dict(encoder["state_dict"], strict=True)
    return model
