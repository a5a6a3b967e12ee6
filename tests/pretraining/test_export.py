"""Export: every accepted checkpoint layout gives torchvision ResNet-50 names that load strictly."""
from __future__ import annotations

import pytest
import torch
import torchvision

from cellemnet.errors import InputError
from cellemnet.pretraining.export import (
    encoder_from_checkpoint,
    export_encoder,
    load_encoder_into_resnet50,
    resnet50_encoder_keys,
)


def _one_channel_resnet50():
    model = torchvision.models.resnet50(weights=None, num_classes=128)
    model.conv1 = torch.nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    return model


@pytest.fixture(scope="module")
def trunk_state():
    return _one_channel_resnet50().state_dict()


def _published_moco(trunk):
    sd = {}
    for k, v in trunk.items():
        sd[f"module.encoder_q.{k}"] = v
        sd[f"module.encoder_k.{k}"] = v
    sd["module.queue"] = torch.randn(128, 16)
    sd["module.queue_ptr"] = torch.zeros(1, dtype=torch.long)
    return {"epoch": 200, "arch": "resnet50", "state_dict": sd, "optimizer": {}, "norms": [0.58331613, 0.09966064]}


def _published_swav(trunk):
    sd = {f"module.{k}": v for k, v in trunk.items() if not k.startswith("fc.")}
    sd["module.projection_head.0.weight"] = torch.randn(2048, 2048)
    sd["module.prototypes.weight"] = torch.randn(3000, 128)
    return {"epoch": 200, "state_dict": sd, "norms": [0.57571, 0.12765]}


def test_published_moco_layout_exports_torchvision_names(trunk_state):
    enc = encoder_from_checkpoint(_published_moco(trunk_state))
    assert enc["method"] == "mocov2" and enc["in_channels"] == 1
    assert list(enc["state_dict"]) == resnet50_encoder_keys()
    assert not any(k.startswith("fc.") for k in enc["state_dict"])
    assert enc["norms"] == pytest.approx([0.58331613, 0.09966064])
    torch.testing.assert_close(enc["state_dict"]["layer1.0.conv1.weight"], trunk_state["layer1.0.conv1.weight"])


def test_published_swav_layout_loads_strictly_into_torchvision_and_smp(trunk_state, tmp_path):
    import segmentation_models_pytorch as smp

    src = tmp_path / "swav.pth.tar"
    torch.save(_published_swav(trunk_state), src)
    export_encoder(src, tmp_path / "enc.pth")
    enc = torch.load(tmp_path / "enc.pth", weights_only=True)
    assert enc["method"] == "swav"
    load_encoder_into_resnet50(enc)  # strict=True inside, fc replaced by Identity
    model = torchvision.models.resnet50(weights=None)
    model.conv1 = torch.nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    del model.fc
    model.load_state_dict(enc["state_dict"], strict=True)
    unet = smp.Unet("resnet50", in_channels=1, encoder_weights=None, classes=1)
    unet.encoder.load_state_dict(enc["state_dict"], strict=True)


def test_three_channel_or_non_resnet_checkpoints_are_refused(trunk_state):
    bad = _published_swav(trunk_state)
    bad["state_dict"]["module.conv1.weight"] = torch.randn(64, 3, 7, 7)
    with pytest.raises(InputError, match="conv1"):
        encoder_from_checkpoint(bad)
    with pytest.raises(InputError, match="no ResNet encoder"):
        encoder_from_checkpoint({"state_dict": {"a.weight": torch.zeros(1)}})


def test_unreadable_checkpoint_names_the_file(tmp_path):
    path = tmp_path / "junk.pth"
    path.write_text("not a checkpoint")
    with pytest.raises(InputError, match="junk.pth"):
        export_encoder(path, tmp_path / "out.pth")
    assert not (tmp_path / "out.pth").exists()
