"""The encoder-quality probe: script output and result.json, determinism, that it reads the features (more
information -> higher IoU), the online trunk path equal to the file path, tiling and the exact upsampling
it relies on, errors, and a run on real EM (ISBI 2012)."""
from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from eval_core_helpers import ROOT

from cellemnet.errors import ConfigError, InputError
from cellemnet.evaluation import probe as P

SCRIPT = ROOT / "evaluation" / "probe_encoder.py"
NORMS = {"mean": [0.57], "std": [0.13]}
FAST = P.ProbeSettings(seeds=(0,), pixels_per_image=400)
PROBE_LINE = re.compile(r"^Probe_IoU: (\d\.\d{4}) \(random: (\d\.\d{4}), difference: (-?\d\.\d{4})\)$")


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """Synthetic mitochondria, sides that are not multiples of 32 (padding and crop-back are exercised)."""
    from cellemnet.synthetic import make_benchmark

    out = tmp_path_factory.mktemp("probe") / "bench"
    make_benchmark(out, n_train=3, n_test=2, shape=(100, 120), n_valid=0, n_test3d=0)
    return out


def load_script():
    spec = importlib.util.spec_from_file_location("probe_encoder_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_script_prints_the_table_and_writes_result_json(bench, tmp_path, capsys):
    out = tmp_path / "out"
    code = load_script().main(["random_init", str(bench), "arch=resnet18", "seeds=[0,1]", "pixels_per_image=400",
                               f"out={out}"])
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    match = PROBE_LINE.match(lines[-1])
    assert match, lines[-1]
    record = json.loads((out / "result.json").read_text())
    assert record["encoder"] == "random_init" and record["arch"] == "resnet18"
    assert record["layers"] == ["layer1", "layer2", "layer3"] and record["seeds"] == [0, 1]
    assert len(record["encoder_iou"]) == len(record["random_iou"]) == 2
    assert float(match[1]) == pytest.approx(record["encoder_mean"], abs=5e-5)
    assert float(match[2]) == pytest.approx(record["random_mean"], abs=5e-5)
    assert float(match[3]) == pytest.approx(record["difference_mean"], abs=5e-5)
    assert record["difference"] == pytest.approx([e - r for e, r in zip(record["encoder_iou"], record["random_iou"])])
    assert all(0.0 < v < 1.0 for v in record["encoder_iou"] + record["random_iou"])
    assert record["n_train_images"] == 3 and record["n_test_images"] == 2
    assert record["test_dir"].endswith("test2d")  # make_benchmark's layout: no test/, so test2d/
    assert record["train_pixels"] == 3 * 400 and record["seconds"] > 0
    assert any(line.split()[:1] == ["0"] for line in lines)  # the per-seed table
    assert (out / "probe.png").stat().st_size > 1000


def test_same_seeds_give_the_same_ious(bench):
    trunk = P.random_trunk("resnet18", 1, seed=5)
    settings = P.ProbeSettings(seeds=(0, 3), pixels_per_image=400)
    first = P.probe_trunk(trunk, "resnet18", P.load_probe_data(bench), NORMS, settings)
    second = P.probe_trunk(trunk, "resnet18", P.load_probe_data(bench), NORMS, settings)  # nothing cached
    assert first.encoder_iou == second.encoder_iou and first.random_iou == second.random_iou
    assert first.encoder_iou[0] != first.encoder_iou[1]  # the seed does pick other pixels


class BlurredInput(torch.nn.Module):
    """conv1 that sees the image averaged over 16x16 blocks: the same weights, less information."""

    def __init__(self, conv: torch.nn.Conv2d):
        super().__init__()
        self.conv, self.in_channels = conv, conv.in_channels

    def forward(self, x):
        blurred = F.interpolate(F.avg_pool2d(x, 16), size=x.shape[-2:], mode="nearest")
        return self.conv(blurred)


def test_the_probe_measures_the_features(bench):
    """Same random weights, graded information: intact > input blurred 16x > conv1 zeroed (nothing) ~ trivial."""
    import copy

    data = P.load_probe_data(bench)
    intact = P.random_trunk("resnet18", 1, seed=7)
    blurred = copy.deepcopy(intact)
    blurred.conv1 = BlurredInput(blurred.conv1)
    zeroed = copy.deepcopy(intact)
    with torch.no_grad():
        zeroed.conv1.weight.zero_()
    scores = {name: P.probe_trunk(trunk, "resnet18", data, NORMS, FAST).encoder_iou[0]
              for name, trunk in (("intact", intact), ("blurred", blurred), ("zeroed", zeroed))}
    all_foreground = np.mean([item.mask.mean() for item in data.test])  # IoU of predicting everything
    assert scores["intact"] > 0.4
    assert scores["intact"] > scores["blurred"] + 0.1
    assert scores["blurred"] > scores["zeroed"]
    assert scores["zeroed"] <= all_foreground + 1e-6


def exported_encoder_file(trunk: torch.nn.Module, path, arch: str | None) -> None:
    """The layout cellemnet.encoder writes for a 1-channel trunk (older files have no 'arch')."""
    state = {k: v for k, v in trunk.state_dict().items() if not k.startswith("fc.")}
    record = {"state_dict": state, "norms": [NORMS["mean"][0], NORMS["std"][0]], "method": "mocov2",
              "in_channels": 1}
    torch.save(record if arch is None else {**record, "arch": arch}, path)


@pytest.mark.parametrize("arch, recorded", [("resnet50", None), ("resnet18", "resnet18")])
def test_online_trunk_probe_equals_the_file_path(bench, tmp_path, arch, recorded):
    from cellemnet.encoder import one_channel_resnet

    torch.manual_seed(11)
    trunk = one_channel_resnet(arch)
    exported_encoder_file(trunk, tmp_path / "encoder.pth", recorded)
    trunk.train()
    rng_before = torch.get_rng_state()
    online = P.probe_trunk(trunk, arch, P.load_probe_data(bench), NORMS, FAST)
    assert trunk.training  # put back in the mode it had
    assert torch.equal(torch.get_rng_state(), rng_before)  # the pretraining loop's RNG is untouched
    from_file = P.probe_encoder(str(tmp_path / "encoder.pth"), P.load_probe_data(bench), settings=FAST,
                                device="cpu", progress=False)
    assert from_file.arch == arch  # no arch key: the file's own, else resnet50
    assert from_file.encoder_iou == pytest.approx(online.encoder_iou, abs=1e-9)
    assert from_file.random_iou == pytest.approx(online.random_iou, abs=1e-9)
    if recorded:
        with pytest.raises(ConfigError, match=f"arch 'resnet34': encoder '.*' holds a {arch} encoder"):
            P.build_encoder(str(tmp_path / "encoder.pth"), "resnet34", NORMS)


def test_the_baseline_is_cached_in_the_probe_data(bench):
    data = P.load_probe_data(bench)
    first = P.probe_trunk(P.random_trunk("resnet18", 1, seed=1), "resnet18", data, NORMS, FAST)
    assert len(data.baseline_cache) == 1
    second = P.probe_trunk(P.random_trunk("resnet18", 1, seed=2), "resnet18", data, NORMS, FAST)
    assert len(data.baseline_cache) == 1 and second.random_iou == first.random_iou
    assert second.encoder_iou != first.encoder_iou


def test_sampled_features_equal_the_dense_upsampled_features():
    """Training reads features at pixels with grid_sample; prediction upsamples logit maps: the same numbers."""
    torch.manual_seed(0)
    feats = {"layer1": torch.randn(8, 6, 5), "layer2": torch.randn(4, 3, 3)}
    padded = (24, 20)
    dense = torch.cat([F.interpolate(f[None], size=padded, mode="bilinear", align_corners=False)[0]
                       for f in feats.values()])
    ys, xs = np.array([0, 3, 23, 11, 17]), np.array([0, 19, 5, 10, 2])
    sampled = P.features_at(feats, ["layer1", "layer2"], ys, xs, padded)
    assert torch.allclose(sampled, dense[:, ys, xs].T, atol=1e-5)
    probe = P.LinearProbe(weight=np.linspace(-1, 1, 12), mean=np.linspace(0, 0.5, 12), bias=0.3)
    logits = P.dense_logits({k: v[None] for k, v in feats.items()}, ["layer1", "layer2"], [probe], padded)[0, 0]
    expected = (dense.permute(1, 2, 0).double().numpy() - probe.mean) @ probe.weight + probe.bias
    assert np.allclose(logits.numpy(), expected, atol=1e-4)


def test_tile_cores_cover_each_pixel_once():
    tiles = P.image_tiles(0, (300, 170), tile_size=128, overlap=32)
    count = np.zeros((300, 170), int)
    for t in tiles:
        cy0, cy1, cx0, cx1 = t.core
        assert t.y0 <= cy0 < cy1 <= t.y0 + t.height and t.x0 <= cx0 < cx1 <= t.x0 + t.width
        count[cy0:cy1, cx0:cx1] += 1
    assert (count == 1).all() and len(tiles) > 4


class NoBar:
    def update(self, n: int) -> None:
        pass


def test_tiled_probe_scores_close_to_whole_images(bench):
    """Tiles (here 4 per image, batched across images) give nearly the whole-image score; no baseline needed."""
    data = P.load_probe_data(bench)
    trunk = P.random_trunk("resnet18", 1, seed=3)
    whole = P.score_trunk(trunk, data, [0], NORMS, FAST, NoBar())[0]
    tiled_settings = P.ProbeSettings(seeds=(0,), pixels_per_image=400, tile_size=64, tile_overlap=32, batch=3)
    assert max(len(b) for b in P.tile_batches(data.test, tiled_settings)) == 3
    tiled = P.score_trunk(trunk, data, [0], NORMS, tiled_settings, NoBar())[0]
    assert tiled.example.shape == data.test[0].mask.shape
    assert tiled.iou == pytest.approx(whole.iou, abs=0.1)  # tiles see less context
    assert tiled.iou != whole.iou  # tiling did happen


def test_missing_data_folder_and_masks_name_the_folder(bench, tmp_path):
    with pytest.raises(InputError, match=re.escape(str(tmp_path / "nowhere"))):
        P.load_probe_data(tmp_path / "nowhere")
    broken = tmp_path / "broken"
    shutil.copytree(bench, broken)
    shutil.rmtree(broken / "test2d" / "masks")
    with pytest.raises(InputError, match=re.escape(f"{broken / 'test2d'}: no 'masks' folder")):
        P.load_probe_data(broken)
    with pytest.raises(InputError, match="no 'test' or 'test2d' folder"):
        shutil.rmtree(broken / "test2d")
        P.load_probe_data(broken)


def test_keys_are_validated():
    with pytest.raises(ConfigError, match="unknown key 'layer'.*'layers'"):
        P.load_probe_config(["layer=[layer1]"])
    with pytest.raises(ConfigError, match="key 'layers'"):
        P.load_probe_config(["layers=[layer9]"])
    with pytest.raises(ConfigError, match="key 'arch'"):
        P.load_probe_config(["arch=vgg16"])
    with pytest.raises(ConfigError, match="key 'seeds'"):
        P.load_probe_config(["seeds=[1,1]"])
    with pytest.raises(ConfigError, match="arch 'resnet50' does not match the trunk"):
        P.check_trunk_arch(P.random_trunk("resnet18", 1, seed=0), "resnet50")
    P.check_trunk_arch(P.random_trunk("resnet34", 1, seed=0), "resnet34")
    cfg = P.load_probe_config(["seeds=[4]", "layers=[conv1,layer2]"])
    assert cfg["seeds"] == [4] and cfg["layers"] == ["conv1", "layer2"] and cfg["arch"] is None


def test_script_errors_are_one_line(bench, tmp_path):
    run = subprocess.run([sys.executable, str(SCRIPT), "random_init", str(tmp_path / "missing")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [f"error: {tmp_path / 'missing'}: data folder not found"]
    run = subprocess.run([sys.executable, str(SCRIPT), "random_init", str(bench), "sedes=[0]"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and run.stderr.strip().splitlines() == [
        "error: override 'sedes=...': unknown key 'sedes' (did you mean 'seeds'?)"]


@pytest.mark.shared_data
@pytest.mark.slow
def test_probe_on_isbi2012_membranes(shared_data, tmp_path):
    """Real EM: two 512x512 ISBI slices to train, two held-out slices to score, resnet18."""
    from cellemnet.evaluation.examples import layout_isbi2012

    bench = layout_isbi2012(shared_data / "isbi2012", tmp_path / "isbi", n_test=2, n_train=2)
    data = P.load_probe_data(bench)
    assert [item.image.shape for item in data.test] == [(512, 512)] * 2
    result = P.probe_encoder("random_init", data, arch="resnet18", settings=FAST, device="cpu", progress=False)
    assert all(0.0 < v < 1.0 for v in result.encoder_iou + result.random_iou)
    assert abs(result.difference_mean) < 0.1  # two random encoders: no real difference
