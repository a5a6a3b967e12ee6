"""The U-Net (smp, ResNet-18/34/50 encoder), encoder freezing, and the train/eval mode that keeps frozen BN frozen."""
from __future__ import annotations

import torch
from torch import nn

from cellemnet.evaluation.weights import (
    EncoderWeights,
    check_encoder_arch,
    imagenet_offline_error,
    load_encoder_strict,
)

# Index of the first encoder child that trains, for each finetune_layer (smp ResNetEncoder children are
# conv1, bn1, relu, maxpool, layer1, layer2, layer3, layer4).
_FIRST_TRAINED_CHILD = {"all": "conv1", "layer1": "layer1", "layer2": "layer2", "layer3": "layer3", "layer4": "layer4"}


def build_unet(num_classes: int, weights: EncoderWeights, encoder: str = "resnet50",
               decoder_seed: int | None = None) -> nn.Module:
    """smp.Unet with the encoder weights loaded strictly (or smp's ImageNet weights).

    decoder_seed: initialise the decoder and segmentation head from this seed alone, so that they are identical
    whatever encoder (channels, weights) comes before them in the same run. None: from the global torch RNG,
    as smp does.
    """
    import segmentation_models_pytorch as smp

    check_encoder_arch(weights, encoder, f"'{weights.name}'")
    try:
        model = smp.Unet(
            encoder_name=encoder, encoder_weights=weights.smp_weights, in_channels=weights.in_channels,
            classes=num_classes,
        )
    except Exception as exc:
        if weights.smp_weights is None:
            raise
        raise imagenet_offline_error(exc) from None
    if decoder_seed is not None:
        reinit_decoder(model, decoder_seed)
    load_encoder_strict(model, weights)
    return model


DECODER_STREAM = 0xDEC0DE  # mixed into the seed: the decoder's draws are not the random encoder's first draws


def reinit_decoder(model: nn.Module, seed: int) -> None:
    """Re-run smp's decoder/head initialisation from a stream of its own derived from `seed`, in a forked RNG
    (the global stream is left as it was)."""
    import numpy as np

    decoder_seed = int(np.random.SeedSequence([seed % 2**32, DECODER_STREAM]).generate_state(1)[0])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(decoder_seed)
        model.initialize()


def build_unet_for_inference(num_classes: int, in_channels: int, encoder: str = "resnet50") -> nn.Module:
    import segmentation_models_pytorch as smp

    return smp.Unet(encoder_name=encoder, encoder_weights=None, in_channels=in_channels, classes=num_classes)


def freeze_encoder(model: nn.Module, finetune_layer: str, unfreeze_bn: bool = False) -> int:
    """Freeze the encoder above `finetune_layer` ('none' freezes all of it); returns the trainable parameter count."""
    names = [name for name, _ in model.encoder.named_children()]
    for p in model.encoder.parameters():
        p.requires_grad = False
    if finetune_layer != "none":
        start = names.index(_FIRST_TRAINED_CHILD[finetune_layer])
        for name, child in model.encoder.named_children():
            if names.index(name) >= start:
                for p in child.parameters():
                    p.requires_grad = True
    if unfreeze_bn:
        for m in model.encoder.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                for p in m.parameters():
                    p.requires_grad = True
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def set_train_mode(model: nn.Module) -> None:
    """model.train(), except BatchNorm layers whose parameters are frozen: they stay in eval mode so that
    their running statistics (the pretrained ones) are not overwritten by fine-tuning batches."""
    model.train()
    encoder = model.module.encoder if hasattr(model, "module") else model.encoder
    for m in encoder.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(p.requires_grad for p in m.parameters()):
            m.eval()


def recompute_bn_statistics(model: nn.Module, batches) -> int:
    """Precise BN: replace the running statistics of the BatchNorm layers that train (not a frozen encoder's) by
    their average over `batches` (image tensors) with the final weights; returns how many layers were updated.

    Why: the running statistics are an EMA (momentum 0.1) of the last ~10 training batches, taken while the
    weights still moved; with small batches (the demo's 2 crops) that estimate can be far enough from the test
    images' statistics to break inference (evaluation/README, "Small batches and BatchNorm")."""
    set_train_mode(model)  # trainable BN in train mode, a frozen encoder's BN stays in eval mode (untouched)
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    momenta = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over every batch below
    with torch.no_grad():
        for x in batches:
            model(x)
    for m, momentum in zip(layers, momenta):
        m.momentum = momentum
    model.eval()
    return len(layers)


def trainable_parameters(model: nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def parameter_groups(model: nn.Module, lr: float, encoder_lr_scale: float = 1.0) -> list[dict]:
    """The optimizer's parameter groups: the trainable parameters at `lr`, the encoder's at lr * encoder_lr_scale.

    One group when the scale is 1 (the layout of every resume state written before the scale existed)."""
    trainable = trainable_parameters(model)
    if encoder_lr_scale == 1.0:
        return [{"params": trainable, "lr": lr}]
    encoder = model.module.encoder if hasattr(model, "module") else model.encoder
    in_encoder = {id(p) for p in encoder.parameters()}
    groups = [{"params": [p for p in trainable if id(p) not in in_encoder], "lr": lr},
              {"params": [p for p in trainable if id(p) in in_encoder], "lr": lr * encoder_lr_scale}]
    return [g for g in groups if g["params"]]
