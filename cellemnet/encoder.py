"""The encoder contract: building a 1-channel ResNet of any supported depth, the normalisation that travels
with it (`Norms`), and reading and writing encoder files. Pretraining writes these files, evaluation, the probe
and the notebooks read them: the format belongs to neither stage.

Exported file (torch.save of a dict of tensors and plain types; load with weights_only=True):
    {"state_dict": torchvision ResNet parameter/buffer names without `fc.*`, conv1 of shape [64, 1, 7, 7],
     "norms": [mean, std], "method": "mocov2" | "swav", "in_channels": 1, "arch": "resnet18" | "resnet34" | "resnet50"}
Files written before "arch" existed hold a ResNet-50, or whatever their state dict shows (`arch_from_state_dict`).

Accepted inputs: this project's MoCoV2/SwAV training checkpoints (any arch in ENCODER_ARCHS), the published CEM500K
MoCoV2 file (keys `module.encoder_q.*`), the published CEM1.5M SwAV file (keys `module.*` plus
`projection_head`/`prototypes`), an already exported file and a fine-tuned U-Net checkpoint (`encoder.*`).

The arch facts live here, once: `one_channel_resnet(arch)` builds the network, `encoder_keys(arch)` lists its
exported names without touching any random number generator, `arch_from_state_dict` recognises a trunk.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Any, Mapping

from cellemnet.constants import EM_MEAN, EM_STD
from cellemnet.errors import InputError
from cellemnet.io import atomic_path, load_torch_dict

METHODS = ("mocov2", "swav")
ENCODER_ARCHS = ("resnet18", "resnet34", "resnet50")
# Residual blocks per stage (layer1..layer4) and whether the blocks are bottlenecks (conv3 exists), per arch.
_ARCH_LAYOUT = {
    "resnet18": ((2, 2, 2, 2), False),
    "resnet34": ((3, 4, 6, 3), False),
    "resnet50": ((3, 4, 6, 3), True),
}
# Where the ResNet trunk lives inside the known layouts, tried in this order (after stripping DDP's `module.`).
_TRUNK_PREFIXES = ("encoder_q.", "encoder.", "backbone.", "")
# Head parameters that are not part of the encoder.
_HEAD_PREFIXES = ("fc.", "projection_head.", "prototypes")


def check_arch(arch: str) -> str:
    if arch not in ENCODER_ARCHS:
        raise InputError(f"encoder arch '{arch}' is not one of {list(ENCODER_ARCHS)}")
    return arch


def one_channel_resnet(arch: str = "resnet50"):
    """torchvision ResNet of `arch` (random init) with a 1-channel 7x7 conv1 (Kaiming, fan_in).

    `fc` is torchvision's (1000 outputs): callers replace it with their head or drop it.
    """
    import torch
    import torchvision

    model = getattr(torchvision.models, check_arch(arch))(weights=None)
    model.conv1 = torch.nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    # fan_in, not torchvision's fan_out: a 1-channel 7x7 stem has fan_out 64*49 vs fan_in 49, so fan_out makes its
    # weights 8x smaller. Behind BN a layer's effective lr grows as 1/|w|^2 (64x here): SSL runs then overwrote the
    # random filters with the low-frequency-dominated gradient of EM images within 30 steps (52 % of conv1's energy
    # in the filter means, a brightness detector); with fan_in it stayed at 2 % (pretraining/README.md).
    torch.nn.init.kaiming_normal_(model.conv1.weight, mode="fan_in", nonlinearity="relu")
    return model


@functools.lru_cache(maxsize=None)
def _encoder_keys(arch: str) -> tuple[str, ...]:
    import torch

    # Built on the meta device: no memory, and no draw from the torch RNG (reading names must not change the
    # random init of whatever is built next, e.g. a U-Net decoder in one arm of a comparison only).
    with torch.device("meta"):
        model = one_channel_resnet(arch)
    return tuple(k for k in model.state_dict() if not k.startswith("fc."))


def encoder_keys(arch: str = "resnet50") -> list[str]:
    """State-dict names of the exported layout: torchvision's ResNet of `arch` without fc (RNG untouched)."""
    return list(_encoder_keys(check_arch(arch)))


def arch_from_state_dict(state_dict: Mapping[str, Any], prefix: str = "") -> str:
    """The arch of a torchvision-named ResNet trunk: bottleneck blocks (layer1.0.conv3) mean resnet50, else the
    number of blocks per stage tells resnet18 from resnet34."""
    blocks = tuple(
        len({k[len(prefix):].split(".")[1] for k in state_dict if k.startswith(f"{prefix}layer{i}.")})
        for i in range(1, 5)
    )
    bottleneck = f"{prefix}layer1.0.conv3.weight" in state_dict
    for arch, layout in _ARCH_LAYOUT.items():
        if layout == (blocks, bottleneck):
            return arch
    kind = "bottleneck" if bottleneck else "basic"
    raise InputError(f"ResNet trunk with {kind} blocks {list(blocks)} per stage is none of {list(ENCODER_ARCHS)}")


def declared_arch(ckpt: Mapping[str, Any]) -> str | None:
    """The arch a checkpoint says it holds: its "arch" key, or its training config's (pretraining checkpoints)."""
    arch = ckpt.get("arch")
    config = ckpt.get("config")
    if arch is None and isinstance(config, Mapping):
        arch = config.get("arch")
    return None if arch in (None, "") else str(arch)


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


@dataclass(frozen=True)
class Norms:
    """Per-channel intensity normalisation (of images scaled to 0..1): x -> (x - mean) / std.

    One type for every stage. On disk it keeps the layouts files already hold: exported encoders and pretraining
    checkpoints store `pair()` ([mean, std], one channel), configs and fine-tuning checkpoints `as_dict()`
    ({"mean": [...], "std": [...]}); `parse` reads either, and [[m], [s]], and None (the EM default).
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def parse(cls, norms: Any) -> "Norms":
        if isinstance(norms, Norms):
            return norms
        if norms is None:
            return cls((float(EM_MEAN),), (float(EM_STD),))
        if isinstance(norms, Mapping):
            if "mean" not in norms or "std" not in norms:
                raise InputError(f"norms {norms!r} need 'mean' and 'std'")
            mean, std = norms["mean"], norms["std"]
        else:
            values = list(norms)
            if len(values) != 2:
                raise InputError(f"norms {norms!r} are not [mean, std]")
            mean, std = values
        mean, std = _floats(mean, norms), _floats(std, norms)
        if len(mean) != len(std):
            raise InputError(f"norms {norms!r}: {len(mean)} means but {len(std)} stds")
        if any(s <= 0 for s in std):
            raise InputError(f"norms {norms!r}: every std must be > 0")
        return cls(mean, std)

    @property
    def channels(self) -> int:
        return len(self.mean)

    def pair(self) -> list[float]:
        """[mean, std] of a 1-channel encoder (the layout of exported encoders and pretraining checkpoints)."""
        if self.channels != 1:
            raise InputError(f"norms {self.as_dict()} describe {self.channels} channels; a 1-channel encoder "
                             "needs one")
        return [self.mean[0], self.std[0]]

    def as_dict(self) -> dict[str, list[float]]:
        """{"mean": [...], "std": [...]} (configs, fine-tuning checkpoints, albumentations' Normalize)."""
        return {"mean": list(self.mean), "std": list(self.std)}


def _floats(value: Any, norms: Any) -> tuple[float, ...]:
    if hasattr(value, "tolist"):
        value = value.tolist()
    values = value if isinstance(value, (list, tuple)) else [value]
    try:
        return tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise InputError(f"norms {norms!r} are not numbers") from None


def encoder_from_checkpoint(ckpt: Mapping[str, Any], arch: str | None = None) -> dict[str, Any]:
    """The exported encoder dict (see module doc) from a loaded checkpoint dict of any accepted layout.

    The arch is read from the state dict's shapes and must agree with what the checkpoint declares (its "arch"
    key) and with `arch` when given; any disagreement is an InputError naming both.
    """
    import torch

    if "state_dict" not in ckpt:
        raise InputError("checkpoint has no 'state_dict' key")
    state_dict = _strip_module(ckpt["state_dict"])
    prefix = _find_trunk_prefix(state_dict)
    method = ckpt.get("method") or _guess_method(state_dict, prefix)
    if method not in METHODS:
        raise InputError(f"checkpoint method {method!r} is not one of {list(METHODS)}")
    found = arch_from_state_dict(state_dict, prefix)
    declared = declared_arch(ckpt)
    if declared is not None and declared != found:
        raise InputError(f"checkpoint says arch '{declared}' but its weights are a {found}")
    if arch is not None and check_arch(arch) != found:
        raise InputError(f"checkpoint holds a {found} encoder, not the {arch} asked for")
    trunk = {
        k[len(prefix):]: v
        for k, v in state_dict.items()
        if k.startswith(prefix) and not k[len(prefix):].startswith(_HEAD_PREFIXES)
    }
    out: dict[str, Any] = {}
    missing = []
    for key in encoder_keys(found):
        if key in trunk:
            out[key] = trunk[key].detach().clone().cpu()
        elif key.endswith("num_batches_tracked"):
            out[key] = torch.tensor(0, dtype=torch.long)  # some layouts drop this counter; it carries no weights
        else:
            missing.append(key)
    if missing:
        raise InputError(
            f"checkpoint encoder is not a complete {found}: {len(missing)} parameters missing "
            f"(first: '{prefix}{missing[0]}')"
        )
    conv1 = out["conv1.weight"]
    if tuple(conv1.shape) != (64, 1, 7, 7):
        raise InputError(f"conv1.weight has shape {tuple(conv1.shape)}; a 1-channel ResNet needs (64, 1, 7, 7)")
    return {
        "state_dict": out,
        "norms": Norms.parse(ckpt.get("norms")).pair(),
        "method": str(method),
        "in_channels": 1,
        "arch": found,
    }


def load_checkpoint_file(path: str | os.PathLike) -> dict[str, Any]:
    """torch.load with weights_only=True and a clear error naming the file (cellemnet.io.load_torch_dict)."""
    return load_torch_dict(path, "checkpoint")


def checkpoint_kind(ckpt: dict[str, Any]) -> str:
    """What a loaded checkpoint dict is, in words, for errors: a pretraining checkpoint, a fine-tuning checkpoint,
    an exported encoder, or an unknown dict (with a few of its keys)."""
    keys = set(ckpt)
    if ckpt.get("method") in ("mocov2", "swav") and {"optimizer", "global_step"} <= keys:
        return f"a {ckpt['method']} pretraining checkpoint"
    if {"state_dict", "scheduler", "config"} <= keys:
        return "a fine-tuning checkpoint"
    if "state_dict" in keys and "optimizer" not in keys and ("method" in keys or "in_channels" in keys):
        return "an exported encoder"
    shown = ", ".join(sorted(map(str, keys))[:5]) or "none"
    return f"an unknown dict (keys: {shown}{', ...' if len(keys) > 5 else ''})"


def export_encoder(checkpoint_path: str | os.PathLike, out_path: str | os.PathLike,
                   arch: str | None = None) -> dict[str, Any]:
    """Read a checkpoint, write the exported encoder atomically to out_path, return the exported dict.

    arch: refuse a checkpoint whose encoder is another arch (default: export whichever it is).
    """
    import torch

    ckpt = load_checkpoint_file(checkpoint_path)
    try:
        encoder = encoder_from_checkpoint(ckpt, arch=arch)
    except InputError as exc:
        raise InputError(f"{checkpoint_path}: {exc}") from None
    with atomic_path(out_path) as tmp:
        torch.save(encoder, tmp)
    return encoder


def encoder_arch(encoder: Mapping[str, Any]) -> str:
    """The arch of an exported encoder dict: its "arch" key, else (older files) what its state dict shows."""
    return declared_arch(encoder) or arch_from_state_dict(encoder["state_dict"])


def load_encoder_into_resnet(encoder: Mapping[str, Any]):
    """A torchvision ResNet of the encoder's arch with a 1-channel conv1, no fc, and the exported weights (strict)."""
    import torch

    model = one_channel_resnet(encoder_arch(encoder))
    model.fc = torch.nn.Identity()
    model.load_state_dict(encoder["state_dict"], strict=True)
    return model

