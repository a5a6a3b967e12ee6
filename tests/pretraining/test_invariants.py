"""Invariants of the SSL pieces: logits, queue, Sinkhorn, LARC, schedules, prototype freeze."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from cellemnet.pretraining.losses import infonce_loss, moco_logits, sinkhorn, swapped_prediction_loss, topk_accuracy
from cellemnet.pretraining.models import MoCo, SwAV
from cellemnet.pretraining.optim import larc_adapt_gradients_, mocov2_lr, swav_lr


def test_moco_logits_shape_positive_first_and_accuracy():
    q = F.normalize(torch.randn(6, 8), dim=1)
    queue = F.normalize(torch.randn(8, 20), dim=0)
    logits = moco_logits(q, q.clone(), queue, 0.2)
    assert logits.shape == (6, 21)
    torch.testing.assert_close(logits[:, 0], torch.full((6,), 1 / 0.2))  # q.q = 1
    assert topk_accuracy(logits, torch.zeros(6, dtype=torch.long))[0] == 100.0
    assert infonce_loss(logits) < infonce_loss(moco_logits(q, -q, queue, 0.2))


def test_moco_forward_shapes_and_queue_pointer_wraps_around():
    torch.manual_seed(0)
    model = MoCo("resnet18", dim=16, queue_size=10, momentum=0.9, temperature=0.2)
    logits, keys = model(torch.randn(4, 1, 32, 32), torch.randn(4, 1, 32, 32))
    assert logits.shape == (4, 11) and keys.shape == (4, 16)
    model.queue_ptr[0] = 8
    new = F.normalize(torch.randn(4, 16), dim=1)
    model.dequeue_and_enqueue(new)
    assert int(model.queue_ptr) == 2  # (8 + 4) mod 10
    torch.testing.assert_close(model.queue[:, [8, 9, 0, 1]], new.t())


def test_key_encoder_is_an_ema_of_the_query_encoder():
    model = MoCo("resnet18", dim=8, queue_size=8, momentum=0.9)
    q0 = model.encoder_q.conv1.weight
    with torch.no_grad():
        q0.add_(1.0)
    before = model.encoder_k.conv1.weight.clone()
    model.momentum_update_key_encoder()
    torch.testing.assert_close(model.encoder_k.conv1.weight, 0.9 * before + 0.1 * q0)
    assert not any(p.requires_grad for p in model.encoder_k.parameters())


def test_sinkhorn_codes_have_uniform_marginals():
    torch.manual_seed(0)
    scores = torch.randn(64, 8) * 0.3
    codes = sinkhorn(scores, epsilon=0.05, iterations=50)
    torch.testing.assert_close(codes.sum(dim=1), torch.ones(64))  # each sample one unit
    torch.testing.assert_close(codes.sum(dim=0), torch.full((8,), 64 / 8), rtol=0.02, atol=0.02)  # equipartition
    few = sinkhorn(scores, epsilon=0.05, iterations=3)
    torch.testing.assert_close(few.sum(dim=1), torch.ones(64))


def test_swapped_prediction_loss_is_lower_for_agreeing_crops():
    codes = {0: F.one_hot(torch.arange(4), 4).float()}
    agree = [torch.eye(4) * 10, torch.eye(4) * 10]
    disagree = [torch.eye(4) * 10, torch.eye(4).roll(1, 0) * 10]
    assert swapped_prediction_loss(agree, codes, 0.1) < swapped_prediction_loss(disagree, codes, 0.1)


def test_schedules_start_and_end_values():
    assert mocov2_lr(0.015, 0, 200, [120, 160], cos=False) == 0.015
    assert mocov2_lr(0.015, 120, 200, [120, 160], cos=False) == pytest.approx(0.0015)
    assert mocov2_lr(0.015, 199, 200, [120, 160], cos=False) == pytest.approx(0.00015)
    assert mocov2_lr(0.015, 0, 200, [], cos=True) == 0.015
    assert mocov2_lr(0.015, 199, 200, [], cos=True) < 0.015 * 1e-3
    assert swav_lr(0, 100, 200, 0.6, 0.0006) == pytest.approx(0.6)
    assert swav_lr(100 * 200, 100, 200, 0.6, 0.0006) == pytest.approx(0.0006)
    assert swav_lr(0, 100, 200, 0.6, 0.0006, warmup_epochs=10, start_warmup=0.01) == pytest.approx(0.01)
    assert swav_lr(1000, 100, 200, 0.6, 0.0006, warmup_epochs=10, start_warmup=0.01) == pytest.approx(0.6)


def test_larc_scales_the_update_to_trust_times_weight_norm():
    p = torch.nn.Parameter(torch.full((10,), 2.0))
    p.grad = torch.full((10,), 50.0)
    larc_adapt_gradients_([p], weight_decay=0.0, trust_coefficient=0.001)
    assert math.isclose(float(p.grad.norm()), 0.001 * float(p.detach().norm()), rel_tol=1e-5)


def test_prototypes_stay_frozen_for_the_first_iterations():
    from cellemnet.pretraining.methods import SwAVMethod

    torch.manual_seed(0)
    cfg = {"nmb_crops": [2, 1], "size_crops": [32, 16], "crops_for_assign": [0, 1], "temperature": 0.1,
           "epsilon": 0.05, "sinkhorn_iterations": 3, "freeze_prototypes_niters": 1, "weight_decay": 1e-6,
           "trust_coefficient": 0.001, "lr": 0.6, "momentum": 0.9}
    method = SwAVMethod(cfg)
    model = SwAV("resnet18", hidden_mlp=16, feat_dim=8, nmb_prototypes=5)
    opt = method.build_optimizer(model)
    run = SimpleNamespace(device=torch.device("cpu"), amp=False, channels_last=False, model=model, unwrapped=model,
                          optimizer=opt, scaler=torch.amp.GradScaler("cpu", enabled=False), global_step=0)
    batch = [torch.randn(4, 1, 32, 32), torch.randn(4, 1, 32, 32), torch.randn(4, 1, 16, 16)]
    method.step(batch, run)
    frozen = F.normalize(model.prototypes.weight.detach().clone(), dim=1)
    trunk = model.encoder.conv1.weight.detach().clone()
    method.step(batch, run)  # global_step 0 < 1: prototypes get no update, the trunk does
    assert not torch.equal(model.encoder.conv1.weight, trunk)
    model.normalize_prototypes()
    torch.testing.assert_close(model.prototypes.weight, frozen)
    run.global_step = 1
    method.step(batch, run)
    model.normalize_prototypes()
    assert not torch.allclose(model.prototypes.weight, frozen)


def test_infonce_loss_falls_when_queries_are_optimised():
    torch.manual_seed(0)
    k = F.normalize(torch.randn(8, 16), dim=1)
    queue = F.normalize(torch.randn(16, 64), dim=0)
    q = torch.nn.Parameter(torch.randn(8, 16))
    opt = torch.optim.SGD([q], lr=0.5)
    losses = []
    for _ in range(30):
        loss = infonce_loss(moco_logits(F.normalize(q, dim=1), k, queue, 0.2))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_swav_loss_falls_when_a_head_is_optimised():
    torch.manual_seed(0)
    feats = [F.normalize(torch.randn(16, 8), dim=1)]
    feats.append(F.normalize(feats[0] + 0.1 * torch.randn(16, 8), dim=1))
    prototypes = torch.nn.Linear(8, 4, bias=False)
    opt = torch.optim.SGD(prototypes.parameters(), lr=0.5)
    losses = []
    for _ in range(40):
        scores = [prototypes(f) for f in feats]
        codes = {0: sinkhorn(scores[0].detach(), 0.05, 3), 1: sinkhorn(scores[1].detach(), 0.05, 3)}
        loss = swapped_prediction_loss(scores, codes, 0.1)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


def test_topk_accuracy_counts_ties_against_the_target():
    logits = torch.tensor([[3.0, 1.0, 2.0], [1.0, 2.0, 3.0], [0.5, 0.5, 0.5]])
    target = torch.zeros(3, dtype=torch.long)
    top1, top2 = topk_accuracy(logits, target, ks=(1, 2))
    assert top1 == pytest.approx(100 / 3) and top2 == pytest.approx(100 / 3)
