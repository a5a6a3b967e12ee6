"""Export: every accepted checkpoint layout and arch (ResNet-18/34/50) gives torchvision names that load strictly."""
from __future__ import annotations

import pytest
import torch
import torchvision

from cellemnet.encoder import encoder_from_checkpoint, encoder_keys, export_encoder, load_encoder_into_resnet
from cellemnet.errors import InputError


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
    assert list(enc["state_dict"]) == encoder_keys("resnet50")
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
    load_encoder_into_resnet(enc)  # strict=True inside, fc replaced by Identity
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


@pytest.mark.parametrize("arch", ["resnet18", "resnet34", "resnet50"])
def test_every_arch_exports_with_its_name_and_loads_into_torchvision_and_smp(arch, tmp_path):
    import segmentation_models_pytorch as smp

    from cellemnet.encoder import encoder_keys, one_channel_resnet

    trunk = one_channel_resnet(arch).state_dict()
    src = tmp_path / "moco.pth"
    ckpt = {"method": "mocov2", "norms": [0.5, 0.1], "config": {"arch": arch},
            "state_dict": {f"encoder_q.{k}": v for k, v in trunk.items()}}
    torch.save(ckpt, src)
    enc = export_encoder(src, tmp_path / "enc.pth")
    saved = torch.load(tmp_path / "enc.pth", weights_only=True)
    assert enc["arch"] == saved["arch"] == arch
    assert list(saved["state_dict"]) == encoder_keys(arch)
    load_encoder_into_resnet(saved)  # any arch, strict
    smp.Unet(arch, in_channels=1, encoder_weights=None, classes=1).encoder.load_state_dict(saved["state_dict"])


def test_old_files_without_arch_are_read_from_their_shapes(trunk_state):
    from cellemnet.encoder import arch_from_state_dict, encoder_arch, one_channel_resnet

    old = encoder_from_checkpoint(_published_swav(trunk_state))
    del old["arch"]
    assert encoder_arch(old) == "resnet50"
    small = {k: v for k, v in one_channel_resnet("resnet18").state_dict().items() if not k.startswith("fc.")}
    assert arch_from_state_dict(small) == "resnet18"
    assert encoder_arch({"state_dict": small}) == "resnet18"
    assert arch_from_state_dict({f"encoder.{k}": v for k, v in small.items()}, prefix="encoder.") == "resnet18"


def test_declared_and_found_arch_must_agree(trunk_state, tmp_path):
    moco = _published_moco(trunk_state)
    moco["arch"] = "resnet18"  # says resnet18, holds a resnet50
    with pytest.raises(InputError, match="resnet18.*resnet50"):
        encoder_from_checkpoint(moco)
    src = tmp_path / "swav.pth"
    torch.save(_published_swav(trunk_state), src)
    with pytest.raises(InputError, match=r"swav.pth: .*resnet50.*resnet34"):
        export_encoder(src, tmp_path / "out.pth", arch="resnet34")
    assert not (tmp_path / "out.pth").exists()


def test_a_truncated_trunk_is_no_known_arch():
    from cellemnet.encoder import one_channel_resnet

    state = {k: v for k, v in one_channel_resnet("resnet34").state_dict().items() if not k.startswith("layer3.5.")}
    with pytest.raises(InputError, match=r"basic blocks \[3, 4, 5, 3\]"):
        encoder_from_checkpoint({"method": "swav", "state_dict": state})


def test_the_pretraining_models_build_their_trunk_with_the_one_builder():
    """One builder of the 1-channel ResNet: MoCo's query encoder is one_channel_resnet's network, fan_in stem."""
    from cellemnet.encoder import one_channel_resnet
    from cellemnet.pretraining.models import MoCo

    torch.manual_seed(0)
    ours = one_channel_resnet("resnet18").state_dict()
    torch.manual_seed(0)
    moco = MoCo("resnet18", dim=16, queue_size=8).encoder_q.state_dict()
    assert all(torch.equal(ours[k], moco[k]) for k in ours if not k.startswith("fc."))


def test_norms_read_every_layout_files_and_configs_hold():
    from cellemnet.constants import EM_MEAN, EM_STD
    from cellemnet.encoder import Norms

    one = Norms((0.5,), (0.2,))
    for layout in ([0.5, 0.2], [[0.5], [0.2]], {"mean": 0.5, "std": 0.2}, {"mean": [0.5], "std": [0.2]},
                   [torch.tensor([0.5]), torch.tensor([0.2])]):
        norms = Norms.parse(layout)
        assert norms.pair() == pytest.approx([0.5, 0.2]) and norms.as_dict().keys() == one.as_dict().keys()
        assert all(norms.as_dict()[k] == pytest.approx(v) for k, v in one.as_dict().items())
    assert Norms.parse(None).pair() == pytest.approx([EM_MEAN, EM_STD])
    rgb = Norms.parse({"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]})
    assert rgb.channels == 3
    with pytest.raises(InputError, match="3 channels"):
        rgb.pair()  # a 1-channel encoder file cannot carry them
    for bad, message in (([0.5], "not \\[mean, std\\]"), ({"mean": 0.5}, "need 'mean' and 'std'"),
                         ({"mean": [0.5, 0.4], "std": [0.2]}, "2 means but 1 stds"), ([0.5, 0.0], "std must be > 0"),
                         (["a", 0.2], "not numbers")):
        with pytest.raises(InputError, match=message):
            Norms.parse(bad)
