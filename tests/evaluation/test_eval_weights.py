"""Pretraining options: formats detected, strict loading, offline errors, channels and norms."""
from __future__ import annotations

import pytest
import torch

from cellemnet.errors import ConfigError, InputError
from cellemnet.evaluation.model import build_unet
from cellemnet.evaluation.weights import PUBLISHED, resolve_pretraining


@pytest.fixture(scope="module")
def encoder_state():
    """A random 1-channel torchvision ResNet-50 trunk (the exported layout)."""
    import torchvision

    torch.manual_seed(3)
    m = torchvision.models.resnet50(weights=None)
    m.conv1 = torch.nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    return {k: v for k, v in m.state_dict().items() if not k.startswith("fc.")}


def _check_loaded(pretraining, encoder_state, norms=(0.6, 0.1)):
    w = resolve_pretraining(str(pretraining), {"mean": 0.5, "std": 0.2})
    assert w.in_channels == 1 and w.norms == {"mean": [norms[0]], "std": [norms[1]]}
    model = build_unet(1, w)
    got = model.encoder.state_dict()
    assert torch.equal(got["layer3.2.conv2.weight"], encoder_state["layer3.2.conv2.weight"])
    return w


def test_exported_encoder_file(tmp_path, encoder_state):
    path = tmp_path / "run" / "encoder.pth"
    path.parent.mkdir()
    torch.save({"state_dict": encoder_state, "norms": [0.6, 0.1], "method": "mocov2", "in_channels": 1}, path)
    w = _check_loaded(path, encoder_state)
    assert w.name == "run"


def test_raw_mocov2_and_swav_checkpoints(tmp_path, encoder_state):
    moco = {f"module.encoder_q.{k}": v for k, v in encoder_state.items()}
    moco["module.encoder_q.fc.0.weight"] = torch.zeros(2048, 2048)
    moco["module.queue"] = torch.zeros(128, 8)
    torch.save({"epoch": 1, "arch": "resnet50", "state_dict": moco, "norms": [0.6, 0.1]}, tmp_path / "moco.pth.tar")
    _check_loaded(tmp_path / "moco.pth.tar", encoder_state)
    swav = {f"module.{k}": v for k, v in encoder_state.items()}
    swav["module.prototypes.weight"] = torch.zeros(30, 128)
    torch.save({"epoch": 1, "state_dict": swav, "norms": [0.6, 0.1]}, tmp_path / "swav.pth")
    _check_loaded(tmp_path / "swav.pth", encoder_state)


def test_mismatched_encoder_is_an_error_not_random_init(tmp_path, encoder_state):
    broken = dict(encoder_state)
    del broken["layer4.2.conv3.weight"]
    torch.save({"state_dict": broken, "norms": [0.6, 0.1], "method": "mocov2", "in_channels": 1}, tmp_path / "b.pth")
    with pytest.raises(InputError, match="layer4.2.conv3.weight"):
        resolve_pretraining(str(tmp_path / "b.pth"), {"mean": 0.5, "std": 0.2})
    torch.save({"something": 1}, tmp_path / "c.pth")
    with pytest.raises(InputError, match="state_dict"):
        resolve_pretraining(str(tmp_path / "c.pth"), {"mean": 0.5, "std": 0.2})


def test_random_init_uses_config_norms_and_channels():
    w = resolve_pretraining("random_init", {"mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6]})
    assert w.in_channels == 3 and w.state_dict is None and w.norms["std"] == [0.4, 0.5, 0.6]


def test_published_weights_offline_error_names_file_and_place(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def no_network(*a, **k):
        raise OSError("network unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    filename = PUBLISHED["cellemnet_mocov2"][0]
    with pytest.raises(ConfigError) as err:
        resolve_pretraining("cellemnet_mocov2", {"mean": 0.5, "std": 0.2})
    msg = str(err.value)
    assert filename in msg and str(tmp_path / "hub" / "checkpoints" / filename) in msg and "zenodo" in msg


def test_cached_published_weights_used_without_network(tmp_path, monkeypatch, encoder_state):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("must not download"))
    target = tmp_path / "hub" / "checkpoints" / PUBLISHED["cellemnet_swav"][0]
    target.parent.mkdir(parents=True)
    swav = {f"module.{k}": v for k, v in encoder_state.items()}
    swav["module.projection_head.0.weight"] = torch.zeros(8, 2048)
    torch.save({"epoch": 200, "state_dict": swav, "norms": [0.6, 0.1]}, target)
    w = _check_loaded("cellemnet_swav", encoder_state)
    assert w.name == "cellemnet_swav"


def test_imagenet_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", "/nonexistent-hf-home")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    w = resolve_pretraining("imagenet_supervised", {"mean": 0.5, "std": 0.2})
    assert w.in_channels == 3
    with pytest.raises(ConfigError, match="imagenet_supervised.*Hugging Face"):
        build_unet(1, w)
