"""SSL settings that cannot work on the data are refused before training, with the key and a working value."""
from __future__ import annotations

import pytest

from cellemnet.errors import ConfigError
from cellemnet.pretraining import guardrails
from cellemnet.pretraining.config import load_pretraining_config
from cellemnet.pretraining.train import train


def _moco(**kw):
    cfg = {"moco_k": 65536, "moco_m": 0.999, "moco_m_schedule": "constant", "lr": 0.015, "batch_size": 128,
           "lr_scaling": "none", "lr_reference_batch": 128, "allow_unsafe_ssl": False}
    cfg.update(kw)
    return cfg


def test_queue_larger_than_a_quarter_of_the_patches_is_refused_with_a_working_value():
    with pytest.raises(ConfigError) as err:
        guardrails.check_data_settings(_moco(moco_k=512), "mocov2", 74)
    msg = str(err.value)
    assert "'moco_k'" in msg and "74 patches" in msg and "moco_k=16" in msg
    assert guardrails.check_data_settings(_moco(moco_k=16), "mocov2", 74) == []
    assert guardrails.max_moco_queue(74) * 4 <= 74


def test_allow_unsafe_ssl_turns_the_error_into_a_loud_warning():
    issued = guardrails.check_data_settings(_moco(moco_k=512, allow_unsafe_ssl=True), "mocov2", 74)
    assert any("UNSAFE" in w and "moco_k" in w for w in issued)


def test_swav_prototypes_and_queue_checked_against_the_data():
    cfg = {"nmb_prototypes": 3000, "queue_length": 3840, "lr": 0.6, "batch_size": 64, "lr_scaling": "none",
           "lr_reference_batch": 64, "allow_unsafe_ssl": False}
    with pytest.raises(ConfigError, match="nmb_prototypes.*use nmb_prototypes=16"):
        guardrails.check_data_settings(cfg, "swav", 74)
    with pytest.raises(ConfigError, match="queue_length"):
        guardrails.check_data_settings({**cfg, "nmb_prototypes": 16}, "swav", 74)
    assert guardrails.check_data_settings({**cfg, "nmb_prototypes": 16, "queue_length": 0}, "swav", 74) == []


def test_linear_lr_rule_and_its_warning():
    assert guardrails.effective_lr(_moco(lr=0.015, batch_size=16, lr_scaling="linear")) == pytest.approx(0.015 / 8)
    assert guardrails.effective_lr(_moco(lr=0.03, batch_size=16)) == 0.03
    warned = guardrails.advisory_warnings(_moco(lr=0.03, batch_size=16), "mocov2", 10_000)
    assert any("16x the paper's" in w and "lr_scaling=linear" in w for w in warned)
    assert not guardrails.advisory_warnings(_moco(lr=0.03, batch_size=16, lr_scaling="linear"), "mocov2", 10_000)


def test_key_encoder_momentum_schedule_moves_early_and_settles_late():
    m = [guardrails.moco_momentum(0.99, s, 100, "cosine") for s in range(101)]
    assert m[0] == pytest.approx(0.99) and m[-1] == pytest.approx(1.0) and all(a <= b for a, b in zip(m, m[1:]))
    assert guardrails.moco_momentum(0.999, 50, 100, "constant") == 0.999
    assert guardrails.stale_key_fraction(0.999, 120) == pytest.approx(0.999 ** 120)
    warned = guardrails.advisory_warnings(_moco(_planned_steps=120), "mocov2", 10_000)
    assert any("'moco_m'" in w and "89%" in w for w in warned)
    assert guardrails.stale_key_fraction(0.99, 300, "cosine") < 0.5 < guardrails.stale_key_fraction(0.99, 120, "cosine")


def test_train_refuses_a_queue_as_large_as_the_data_before_any_checkpoint(root, tmp_path, make_patches, tiny):
    data = make_patches(tmp_path / "p", {"a": 12, "b": 4})
    model_dir = tmp_path / "m"
    overrides = tiny(data, model_dir, moco_k=512, crop_size=32)
    cfg = load_pretraining_config(root / "pretraining/configs/mocov2.yaml", "mocov2",
                                  [*overrides, "allow_unsafe_ssl=false"])
    with pytest.raises(ConfigError, match=r"key 'moco_k'.*16 patches.*moco_k=4"):
        train(cfg, "mocov2")
    assert not list(model_dir.glob("*.pth"))


def test_the_script_prints_one_line_and_exits_non_zero(root, tmp_path, make_patches, tiny):
    import subprocess
    import sys

    data = make_patches(tmp_path / "p", {"a": 12})
    proc = subprocess.run([sys.executable, str(root / "pretraining/train_mocov2.py"),
                           str(root / "pretraining/configs/mocov2.yaml"),
                           *tiny(data, tmp_path / "m", crop_size=32), "allow_unsafe_ssl=false"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "moco_k" in lines[0] and "Traceback" not in proc.stderr, proc.stderr
