"""ResNet-18/34/50 encoders: pretrain -> export -> fine-tune -> 2D/3D inference, and arch mismatches as one-line
errors."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from eval_core_helpers import ROOT, tiny_benchmark, tiny_config

from cellemnet.errors import ConfigError
from cellemnet.evaluation.config import load_eval_config
from cellemnet.evaluation.infer import run_inference2d, run_inference3d
from cellemnet.evaluation.train import finetune


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    yield
    torch.set_num_threads(before)


def _pretrain_resnet18(tmp_path):
    """A seconds-long MoCoV2 run with a ResNet-18 trunk on random patches (mechanics, not quality)."""
    from cellemnet.io import write_image
    from cellemnet.pretraining.config import load_pretraining_config
    from cellemnet.pretraining.train import train

    rng = np.random.default_rng(0)
    for i in range(12):
        write_image(tmp_path / "patches" / "a" / f"p{i:03d}.tif", rng.integers(0, 256, (40, 40), dtype=np.uint8))
    overrides = {"data_path": tmp_path / "patches", "model_dir": tmp_path / "moco", "arch": "resnet18",
                 "batch_size": 8, "workers": 0, "print_freq": 1, "logging": False, "device": "cpu", "epochs": 1,
                 "allow_unsafe_ssl": "true", "health_patches": 8, "crop_size": 32, "moco_k": 16,
                 "iters_per_epoch": 2, "save_freq": 1}
    cfg = load_pretraining_config(ROOT / "pretraining" / "configs" / "mocov2.yaml", "mocov2",
                                  [f"{k}={v}" for k, v in overrides.items()])
    return train(cfg, "mocov2")["checkpoint"]


def test_resnet18_pretrain_export_finetune_and_infer(tmp_path):
    from cellemnet.encoder import export_encoder

    checkpoint = _pretrain_resnet18(tmp_path)
    encoder_path = tmp_path / "mine" / "encoder.pth"
    exported = export_encoder(checkpoint, encoder_path)
    assert exported["arch"] == "resnet18" and exported["method"] == "mocov2"
    assert torch.load(encoder_path, weights_only=True)["arch"] == "resnet18"

    bench = tiny_benchmark(tmp_path / "bench")
    cfg_path = tiny_config(tmp_path / "cfg.yaml", bench, iters=2, logging=False, encoder="resnet18",
                           pretraining=str(encoder_path), finetune_layer="none")
    cfg = load_eval_config(cfg_path, [f"save_dir2d={tmp_path / 'p2d'}", f"save_dir3d={tmp_path / 'p3d'}"],
                           stage="train")
    out = finetune(cfg, progress=False)
    ckpt = torch.load(out["checkpoint"], map_location="cpu", weights_only=True)
    assert ckpt["encoder"] == "resnet18" and out["checkpoint"].endswith("example-mine_ft_none_epoch2_of_2.pth")
    # frozen encoder: the fine-tuned U-Net still holds the pretrained trunk
    torch.testing.assert_close(ckpt["state_dict"]["encoder.layer4.1.conv2.weight"],
                               exported["state_dict"]["layer4.1.conv2.weight"])
    assert "encoder.layer1.0.conv3.weight" not in ckpt["state_dict"]
    assert 0.0 <= run_inference2d(cfg, out["checkpoint"], progress=False) <= 1.0
    assert 0.0 <= run_inference3d(cfg, out["checkpoint"], progress=False) <= 1.0
    # a checkpoint without the "encoder" key (older files) is recognised from its weights
    del ckpt["encoder"]
    torch.save(ckpt, tmp_path / "old.pth")
    assert 0.0 <= run_inference2d(cfg, tmp_path / "old.pth", progress=False) <= 1.0


def _export_file(path, arch, with_arch_key=True):
    from cellemnet.encoder import encoder_keys, one_channel_resnet

    state = one_channel_resnet(arch).state_dict()
    payload = {"state_dict": {k: state[k] for k in encoder_keys(arch)}, "norms": [0.5, 0.2], "method": "swav",
               "in_channels": 1}
    if with_arch_key:
        payload["arch"] = arch
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, path)
    return path


@pytest.mark.parametrize("encoder,file_arch", [("resnet18", "resnet50"), ("resnet50", "resnet34")])
def test_encoder_and_file_arch_mismatch_is_one_line_naming_both(tmp_path, encoder, file_arch):
    from cellemnet.evaluation.weights import resolve_pretraining

    path = _export_file(tmp_path / "w" / "encoder.pth", file_arch, with_arch_key=file_arch != "resnet50")
    with pytest.raises(ConfigError) as info:
        resolve_pretraining(str(path), {"mean": 0.5, "std": 0.2}, encoder=encoder)
    message = str(info.value)
    assert "\n" not in message and encoder in message and file_arch in message and "'encoder'" in message


def test_mismatch_through_the_finetune_script(tmp_path):
    bench = tiny_benchmark(tmp_path / "bench", n_train=2, n_test=1, depth=4)
    path = _export_file(tmp_path / "w" / "encoder.pth", "resnet50")
    cfg_path = tiny_config(tmp_path / "cfg.yaml", bench, logging=False)
    run = subprocess.run([sys.executable, str(ROOT / "evaluation" / "finetune.py"), str(cfg_path), "encoder=resnet18",
                          f"pretraining={path}"], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "resnet18" in lines[0] and "resnet50" in lines[0], run.stderr


def test_published_weights_with_a_small_encoder_fail_before_any_download():
    from cellemnet.evaluation.weights import resolve_pretraining

    with pytest.raises(ConfigError, match="resnet34.*cellemnet_swav.*resnet50"):
        resolve_pretraining("cellemnet_swav", {"mean": 0.5, "std": 0.2}, encoder="resnet34")


def test_unknown_encoder_is_a_config_error(tmp_path):
    bench = tiny_benchmark(tmp_path / "bench", n_train=2, n_test=1, depth=4)
    cfg_path = tiny_config(tmp_path / "cfg.yaml", bench, logging=False)
    with pytest.raises(ConfigError, match="encoder"):
        load_eval_config(cfg_path, ["encoder=resnet101"])
