"""LR policies as the original, checkpoint schedule, freezing and BatchNorm modes, checkpoint names."""
from __future__ import annotations

import pytest
import torch

from cellemnet.evaluation.model import (
    build_unet,
    freeze_encoder,
    parameter_groups,
    recompute_bn_statistics,
    set_train_mode,
)
from cellemnet.evaluation.train import (
    checkpoint_name,
    make_optimizer,
    make_scheduler,
    print_points,
    save_points,
)
from cellemnet.evaluation.weights import EncoderWeights, checkpoint_label

BASE = {"lr": 0.003, "wd": 0.1, "momentum": 0.9, "iters": 100, "power": 0.9, "epochs": 10,
        "lr_decay_epochs": [6, 8], "optim": "AdamW"}


def _lrs(policy, steps, **kw):
    cfg = {**BASE, "lr_policy": policy, **kw}
    p = torch.nn.Parameter(torch.zeros(1))
    opt = make_optimizer(cfg, [p])
    sched = make_scheduler(cfg, opt)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out, opt


def test_onecycle_as_torch_defaults():
    lrs, _ = _lrs("OneCycle", 100)
    assert lrs[0] == pytest.approx(0.003 / 25)
    assert max(lrs) == pytest.approx(0.003, rel=1e-3) and lrs.index(max(lrs)) in (29, 30)
    assert lrs[-1] < 1e-5


def test_poly_and_multistep():
    lrs, _ = _lrs("Poly", 50)
    assert lrs[0] == pytest.approx(0.003) and lrs[10] == pytest.approx(0.003 * 0.9 ** 0.9)
    lrs, _ = _lrs("MultiStep", 10)
    assert lrs[5] == pytest.approx(0.003) and lrs[6] == pytest.approx(3e-4) and lrs[8] == pytest.approx(3e-5)


def test_sgd_uses_momentum():
    _, opt = _lrs("Poly", 1, optim="SGD")
    assert isinstance(opt, torch.optim.SGD) and opt.param_groups[0]["momentum"] == 0.9


def test_checkpoint_and_print_schedules_never_divide_by_zero():
    assert save_points(10, 1) == {10} and save_points(10, 2) == {5, 10} and save_points(10, 0) == set()
    assert print_points(3, 10) == {1, 2, 3}  # fewer steps than prints: the original divided by zero
    assert print_points(10000, 10) == set(range(1000, 10001, 1000))


def test_checkpoint_names_as_the_original(tmp_path):
    cfg = {"experiment_name": "lucchi_pp", "pretraining": "cellemnet_mocov2", "finetune_layer": "none"}
    assert checkpoint_name(cfg, 5, 10) == "lucchi_pp-cellemnet_mocov2_ft_none_epoch5_of_10.pth"
    weights = tmp_path / "MoCoV2_CellEMNet" / "current.pth.tar"
    assert checkpoint_label(str(weights)) == "MoCoV2_CellEMNet"


@pytest.fixture(scope="module")
def unet():
    return build_unet(1, EncoderWeights("random_init", 1, {"mean": [0.5], "std": [0.2]}))


@pytest.mark.parametrize("layer, trained", [
    ("none", set()), ("layer4", {"layer4"}), ("layer2", {"layer2", "layer3", "layer4"}),
    ("all", {"conv1", "bn1", "layer1", "layer2", "layer3", "layer4"}),
])
def test_finetune_layer_freezing(unet, layer, trained):
    freeze_encoder(unet, layer)
    got = {n.split(".")[0] for n, p in unet.encoder.named_parameters() if p.requires_grad}
    assert got == trained
    assert all(p.requires_grad for p in unet.decoder.parameters())


def test_frozen_bn_stays_in_eval_mode_unless_unfrozen(unet):
    freeze_encoder(unet, "layer4")
    set_train_mode(unet)
    assert not unet.encoder.bn1.training and not unet.encoder.layer1[0].bn1.training
    assert unet.encoder.layer4[0].bn1.training and unet.decoder.training
    before = unet.encoder.bn1.running_mean.clone()
    unet(torch.randn(2, 1, 64, 64))
    assert torch.equal(before, unet.encoder.bn1.running_mean)  # pretrained statistics untouched
    freeze_encoder(unet, "none", unfreeze_bn=True)
    set_train_mode(unet)
    assert unet.encoder.bn1.training and unet.encoder.bn1.weight.requires_grad
    assert not unet.encoder.conv1.weight.requires_grad


def test_encoder_lr_scale_gives_the_encoder_its_own_peak_lr(unet):
    freeze_encoder(unet, "layer4")
    assert len(parameter_groups(unet, 0.003)) == 1  # scale 1: the single group old resume states hold
    groups = parameter_groups(unet, 0.003, encoder_lr_scale=0.1)
    encoder = {id(p) for p in unet.encoder.layer4.parameters()}
    assert [g["lr"] for g in groups] == [0.003, pytest.approx(0.0003)]
    assert {id(p) for p in groups[1]["params"]} == encoder
    assert not encoder & {id(p) for p in groups[0]["params"]}
    cfg = {**BASE, "lr_policy": "OneCycle"}
    opt = make_optimizer(cfg, groups)
    sched = make_scheduler(cfg, opt)
    peaks = [0.0, 0.0]
    for _ in range(100):
        peaks = [max(peak, g["lr"]) for peak, g in zip(peaks, opt.param_groups)]
        sched.step()
    assert peaks == [pytest.approx(0.003, rel=1e-3), pytest.approx(0.0003, rel=1e-3)]
    freeze_encoder(unet, "none")
    assert len(parameter_groups(unet, 0.003, encoder_lr_scale=0.1)) == 1  # nothing of the encoder trains


def test_precise_bn_averages_the_trained_layers_and_leaves_a_frozen_encoder_alone(unet):
    freeze_encoder(unet, "none")
    unet.encoder.bn1.running_mean.fill_(0.25)  # stands for pretrained statistics
    decoder_bn = next(m for m in unet.decoder.modules() if isinstance(m, torch.nn.BatchNorm2d))
    decoder_bn.running_mean.fill_(7.0)  # a stale EMA
    batches = [torch.randn(1, 1, 64, 64) + 3.0 for _ in range(4)]
    updated = recompute_bn_statistics(unet, iter(batches))
    n_decoder_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in unet.decoder.modules())
    assert updated == n_decoder_bn > 0  # the decoder's BN layers, none of the frozen encoder's
    assert torch.all(unet.encoder.bn1.running_mean == 0.25)
    assert decoder_bn.momentum == 0.1 and decoder_bn.num_batches_tracked == 4
    # the cumulative average equals the mean of the per-batch means of that layer's input
    inputs = []
    hook = decoder_bn.register_forward_pre_hook(lambda m, args: inputs.append(args[0].detach()))
    with torch.no_grad():
        for x in batches:
            unet(x)
    hook.remove()
    expected = torch.stack([i.mean(dim=(0, 2, 3)) for i in inputs]).mean(0)
    assert torch.allclose(decoder_bn.running_mean, expected, atol=1e-5)
    assert not unet.training
