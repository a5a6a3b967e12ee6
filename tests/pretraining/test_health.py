"""The health statistics measure what they claim, and the verdict says 'did not learn' for broken runs."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from cellemnet.pretraining import health
from cellemnet.pretraining.config import load_pretraining_config
from cellemnet.pretraining.models import MoCo
from cellemnet.pretraining.train import train


def test_spread_and_rank_tell_spread_from_collapsed_embeddings():
    g = torch.Generator().manual_seed(0)
    spread = F.normalize(torch.randn(512, 64, generator=g), dim=1)
    collapsed = F.normalize(torch.ones(512, 64) + 1e-3 * torch.randn(512, 64, generator=g), dim=1)
    assert health.embedding_spread(spread) == pytest.approx(1.0, abs=0.05)
    assert health.embedding_spread(collapsed) < 0.01
    assert health.effective_rank(spread) > 40 > 2 > health.effective_rank(torch.ones(100, 8))


def test_pair_statistics_find_matching_views():
    g = torch.Generator().manual_seed(0)
    a = F.normalize(torch.randn(64, 32, generator=g), dim=1)
    b = F.normalize(a + 0.1 * torch.randn(64, 32, generator=g), dim=1)
    stats = health.pair_statistics(a, b)
    assert stats["retrieval"] == 1.0 and stats["sim_gap"] > 0.8
    shuffled = health.pair_statistics(a, b[torch.randperm(64, generator=g)])
    assert shuffled["retrieval"] < 0.2 and abs(shuffled["sim_gap"]) < 0.2


def test_conv1_mean_energy_flags_a_brightness_stem():
    w = torch.randn(64, 1, 7, 7)
    assert health.conv1_mean_energy(w - w.mean(dim=(1, 2, 3), keepdim=True)) < 1e-6
    assert health.conv1_mean_energy(w + 10.0) > 0.9


def _record(**kw):
    rec = {"spread": 0.2, "feature_rank": 50.0, "pos_sim": 0.97, "neg_sim": 0.96, "sim_gap": 0.01,
           "retrieval": 0.05, "conv1_mean_energy": 0.02, "finite": True}
    rec.update(kw)
    return rec


@pytest.mark.parametrize("final, words", [
    (_record(spread=0.02, sim_gap=0.5, retrieval=0.5), "collapsed"),
    (_record(spread=0.6, conv1_mean_energy=0.8, sim_gap=0.5, retrieval=0.5), "brightness"),
    (_record(spread=0.6, sim_gap=0.02, retrieval=0.5), "similarity gap"),
    (_record(spread=0.6, sim_gap=0.5, retrieval=0.06), "retrieval"),
    (_record(finite=False), "non-finite"),
])
def test_verdict_names_the_reason(final, words):
    learned, reason = health.verdict(_record(), final)
    assert not learned and words in reason


def test_verdict_learned_needs_evidence_and_a_probe_that_does_not_fall():
    good = _record(spread=0.6, sim_gap=0.4, retrieval=0.4)
    assert health.verdict(_record(), good) == (True, pytest.approx(health.verdict(_record(), good)[1]))
    assert health.verdict(_record(), good)[0]
    learned, reason = health.verdict(_record(), good, probe_initial=0.5, probe_final=0.4)
    assert not learned and "probe" in reason
    assert not health.verdict(_record(), good, nonfinite_step=3)[0]


def test_measure_restores_the_training_mode_and_reads_a_moco_model():
    model = MoCo("resnet18", dim=16, queue_size=8, momentum=0.99)
    model.train()
    g = torch.Generator().manual_seed(0)
    hs = health.HealthSet(torch.randn(6, 1, 32, 32, generator=g), torch.randn(6, 1, 32, 32, generator=g))
    stats = health.measure(model, hs, torch.device("cpu"), batch=4)
    assert model.encoder_q.training and set(stats) >= {"spread", "retrieval", "sim_gap", "feature_rank"}
    assert 0.0 <= stats["retrieval"] <= 1.0 and stats["finite"]


def test_a_run_with_a_far_too_high_lr_ends_with_did_not_learn_and_export_refuses(root, tmp_path, make_patches,
                                                                                   tiny):
    data = make_patches(tmp_path / "p", {"a": 24, "b": 8})
    model_dir = tmp_path / "m"
    cfg = load_pretraining_config(root / "pretraining/configs/mocov2.yaml", "mocov2", tiny(
        data, model_dir, crop_size=32, moco_k=8, lr=1000.0, epochs=3, iters_per_epoch=4))
    summary = train(cfg, "mocov2")
    assert summary["verdict"]["learned"] is False
    saved = json.loads((model_dir / health.HEALTH_FILE).read_text())
    assert saved["verdict"]["learned"] is False and len(saved["records"]) >= 2
    state = torch.load(model_dir / "current.pth", weights_only=True)
    assert health.refusal(state, "ckpt") and "did not learn" in health.refusal(state, "ckpt")
    export = [sys.executable, str(root / "pretraining/export_encoder.py"), str(model_dir / "current.pth"),
              str(tmp_path / "enc.pth")]
    refused = subprocess.run(export, capture_output=True, text=True, timeout=300)
    assert refused.returncode != 0 and "did not learn" in refused.stderr and not (tmp_path / "enc.pth").exists()
    assert subprocess.run([*export, "--force"], capture_output=True, text=True, timeout=300).returncode == 0


def test_a_collapsed_projector_ends_with_did_not_learn(root, tmp_path, make_patches, tiny, monkeypatch):
    """A projector whose last layer outputs a constant: every embedding is the same point."""
    from cellemnet.pretraining.methods import MoCoV2Method

    original = MoCoV2Method.build_model

    def collapsed(self):
        model = original(self)
        for enc in (model.encoder_q, model.encoder_k):
            last = enc.fc[-1]
            torch.nn.init.zeros_(last.weight)
            last.weight.requires_grad_(False)
            with torch.no_grad():
                last.bias.fill_(1.0)
            last.bias.requires_grad_(False)
        return model

    monkeypatch.setattr(MoCoV2Method, "build_model", collapsed)
    data = make_patches(tmp_path / "p", {"a": 24, "b": 8})
    cfg = load_pretraining_config(root / "pretraining/configs/mocov2.yaml", "mocov2", tiny(
        data, tmp_path / "m", crop_size=32, moco_k=8, epochs=2, iters_per_epoch=3))
    summary = train(cfg, "mocov2")
    assert summary["verdict"]["learned"] is False and "collapsed" in summary["verdict"]["reason"]
