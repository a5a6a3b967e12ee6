"""Fair comparisons: one seed gives one result (any number of workers), and both arms get the same decoder init."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from eval_core_helpers import tiny_benchmark, tiny_config

from cellemnet.evaluation.augment import build_train_transforms, seed_pipeline
from cellemnet.evaluation.config import load_eval_config
from cellemnet.evaluation.data import SegmentationDataset
from cellemnet.evaluation.infer import run_inference2d
from cellemnet.evaluation.model import build_unet
from cellemnet.evaluation.train import _loader, finetune
from cellemnet.evaluation.weights import resolve_pretraining
from cellemnet.runtime import DistInfo, seed_everything

AUGMENT = [{"aug": "RandomResizedCrop", "height": 48, "width": 48, "scale": [0.3, 1.0]}, {"aug": "HorizontalFlip"},
           {"aug": "VerticalFlip"}, {"aug": "Rotate", "limit": 90}]


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # a busy 2-core machine; equal thread counts in the runs compared
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    return tiny_benchmark(tmp_path_factory.mktemp("seeding") / "bench", n_train=4)


def _encoder_file(path, seed=5):
    """An exported 1-channel ResNet-50 encoder with random weights."""
    from cellemnet.encoder import encoder_keys, one_channel_resnet

    torch.manual_seed(seed)
    state = one_channel_resnet("resnet50").state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {k: state[k] for k in encoder_keys("resnet50")}, "norms": [0.5, 0.2],
                "method": "mocov2", "in_channels": 1, "arch": "resnet50"}, path)
    return path


def test_two_runs_of_one_config_give_identical_weights_and_test_iou(bench, tmp_path):
    scores, states = [], []
    for run in ("a", "b"):
        cfg_path = tiny_config(tmp_path / run / "cfg.yaml", bench, iters=3, logging=False, augmentations=AUGMENT)
        cfg = load_eval_config(cfg_path, [f"save_dir2d={tmp_path / run / 'pred'}"], stage="train")
        out = finetune(cfg, progress=False)
        states.append(torch.load(out["checkpoint"], map_location="cpu", weights_only=True)["state_dict"])
        scores.append(run_inference2d(cfg, out["checkpoint"], progress=False))
    assert set(states[0]) == set(states[1])
    different = [k for k in states[0] if not torch.equal(states[0][k], states[1][k])]
    assert different == []
    assert scores[0] == scores[1]
    # and the seed matters: another seed trains other weights
    cfg_path = tiny_config(tmp_path / "c" / "cfg.yaml", bench, iters=3, logging=False, augmentations=AUGMENT, seed=7)
    other = torch.load(finetune(load_eval_config(cfg_path, stage="train"), progress=False)["checkpoint"],
                       map_location="cpu", weights_only=True)["state_dict"]
    assert not torch.equal(other["decoder.blocks.0.conv1.0.weight"], states[0]["decoder.blocks.0.conv1.0.weight"])


def _batches(bench, jobs: int, n: int = 4):
    weights = resolve_pretraining("random_init", {"mean": 0.5, "std": 0.2})
    dataset = SegmentationDataset(bench / "train", build_train_transforms(AUGMENT, weights.norms, seed=3), 1, 1)
    loader, sampler = _loader(dataset, 2, True, jobs, torch.device("cpu"), DistInfo(), drop_last=True, seed=3)
    out = []
    while len(out) < n:  # two epochs of two batches: the draw counter runs on across epochs
        for batch in loader:
            out.append(batch)
    return out[:n]


def test_data_order_and_augmentation_do_not_depend_on_the_worker_count(bench):
    main_process, workers = _batches(bench, jobs=0), _batches(bench, jobs=2)
    for a, b in zip(main_process, workers):
        assert a["name"] == b["name"]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    # an epoch later the same images are augmented afresh
    assert sorted(main_process[0]["name"] + main_process[1]["name"]) == sorted(
        main_process[2]["name"] + main_process[3]["name"])
    by_name = {}
    for batch in main_process:
        for name, image in zip(batch["name"], batch["image"]):
            by_name.setdefault(name, []).append(image)
    assert all(not torch.equal(first, second) for first, second in by_name.values())


def test_shared_stream_keeps_transforms_independent():
    """albumentations' Compose(seed=s) gives each transform the same stream: HorizontalFlip and VerticalFlip then
    always agree. One shared stream makes them independent."""
    import albumentations as A

    image = np.arange(16, dtype=np.uint8).reshape(4, 4)

    def agreement(pipeline) -> int:
        flips = []
        for _ in range(60):
            corner = pipeline(image=image)["image"][0, 0]
            flips.append((corner in (3, 15), corner in (12, 15)))  # (horizontal, vertical)
        return sum(h == v for h, v in flips)

    assert agreement(A.Compose([A.HorizontalFlip(), A.VerticalFlip()], seed=3)) == 60  # the trap
    shared = A.Compose([A.HorizontalFlip(), A.VerticalFlip()])
    seed_pipeline(shared, (3,))
    assert 15 < agreement(shared) < 45
    again = A.Compose([A.HorizontalFlip(), A.VerticalFlip()])
    seed_pipeline(again, (3,))
    seed_pipeline(shared, (3,))
    assert [again(image=image)["image"].tolist() for _ in range(10)] == [
        shared(image=image)["image"].tolist() for _ in range(10)]


def _decoder_state(model):
    return {k: v.clone() for k, v in model.state_dict().items() if k.startswith(("decoder.", "segmentation_head."))}


def test_both_arms_get_an_identical_decoder_init(tmp_path):
    encoder = _encoder_file(tmp_path / "run" / "encoder.pth")
    states = {}
    for arm in ("random_init", str(encoder)):
        seed_everything(42)
        weights = resolve_pretraining(arm, {"mean": 0.5, "std": 0.2}, encoder="resnet50")
        model = build_unet(1, weights, "resnet50", decoder_seed=42)
        states[arm] = (_decoder_state(model), model.encoder.conv1.weight.detach().clone())
    (random_decoder, random_conv1), (loaded_decoder, loaded_conv1) = states.values()
    assert random_decoder.keys() == loaded_decoder.keys() and len(random_decoder) > 10
    assert all(torch.equal(random_decoder[k], loaded_decoder[k]) for k in random_decoder)
    assert not torch.equal(random_conv1, loaded_conv1)  # the encoders do differ
    # 3 channels (another encoder init before the decoder) leave the decoder as it is, too
    seed_everything(0)
    three = build_unet(1, resolve_pretraining("random_init", {"mean": [0.5] * 3, "std": [0.2] * 3}), "resnet50",
                       decoder_seed=42)
    assert all(torch.equal(v, _decoder_state(three)[k]) for k, v in random_decoder.items())


def test_finetune_gives_both_arms_the_same_decoder_start(bench, tmp_path, monkeypatch):
    """Through finetune itself: the decoder weights it starts from are the same for both arms of one seed."""
    import cellemnet.evaluation.train as train_module

    encoder = _encoder_file(tmp_path / "run" / "encoder.pth")
    built = {}
    real_build = train_module.build_unet

    def spy(num_classes, weights, encoder_name, decoder_seed=None):
        model = real_build(num_classes, weights, encoder_name, decoder_seed=decoder_seed)
        built[weights.name] = _decoder_state(model)
        return model

    monkeypatch.setattr(train_module, "build_unet", spy)
    for arm in ("random_init", str(encoder)):
        cfg_path = tiny_config(tmp_path / "cfg.yaml", bench, iters=1, logging=False, num_save_checkpoints=0,
                               pretraining=arm, finetune_layer="none" if arm != "random_init" else "all")
        finetune(load_eval_config(cfg_path, stage="train"), progress=False)
    assert set(built) == {"random_init", "run"}
    assert all(torch.equal(built["random_init"][k], built["run"][k]) for k in built["run"])


def test_reading_encoder_key_names_draws_no_random_numbers():
    from cellemnet.encoder import _encoder_keys, encoder_keys

    _encoder_keys.cache_clear()
    before = torch.random.get_rng_state()
    keys = encoder_keys("resnet18") + encoder_keys("resnet50")
    assert torch.equal(before, torch.random.get_rng_state())
    assert "layer1.0.conv3.weight" in keys and not any(k.startswith("fc.") for k in keys)


def test_a_cycle_that_skips_k_batches_continues_with_the_uninterrupted_batches(bench):
    from cellemnet.evaluation.train import _cycle

    def cycle(skip):
        weights = resolve_pretraining("random_init", {"mean": 0.5, "std": 0.2})
        dataset = SegmentationDataset(bench / "train", build_train_transforms(AUGMENT, weights.norms, seed=3), 1, 1)
        loader, sampler = _loader(dataset, 2, True, 0, torch.device("cpu"), DistInfo(), drop_last=True, seed=3)
        return _cycle(loader, sampler, skip_batches=skip)

    clean = cycle(0)
    reference = [next(clean) for _ in range(7)]  # 2 batches per epoch: 3.5 epochs
    resumed = cycle(3)  # stopped after 1.5 epochs
    for expected in reference[3:]:
        batch = next(resumed)
        assert batch["name"] == expected["name"] and torch.equal(batch["image"], expected["image"])


def _finetune_process(cfg_path, *overrides):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    return subprocess.Popen([sys.executable, str(root / "evaluation/finetune.py"), str(cfg_path), *overrides],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})


def _wait_for_state(path, proc, min_step: int, timeout: float = 120):
    import time

    start = time.time()
    while True:
        if path.is_file():
            try:
                if torch.load(path, weights_only=True)["step"] >= min_step:
                    return
            except (OSError, RuntimeError, EOFError, KeyError):
                pass  # read while being replaced (the rename is atomic; the old file may have gone)
        assert proc.poll() is None, proc.stdout.read()[-2000:]
        assert time.time() - start < timeout, "fine-tuning made no progress"
        time.sleep(0.02)


@pytest.mark.slow
def test_sigterm_and_kill_then_resume_auto_give_the_weights_of_an_uninterrupted_run(bench, tmp_path):
    import signal

    from cellemnet.workers import live_children, still_alive_after

    settings = dict(iters=16, logging=False, augmentations=AUGMENT, checkpoint_iters=1, jobs=1, encoder="resnet18")
    clean_cfg = tiny_config(tmp_path / "clean" / "cfg.yaml", bench, **settings)
    clean = finetune(load_eval_config(clean_cfg, stage="train"), progress=False)
    assert not list((tmp_path / "clean" / "models").glob("*_resume.pth"))  # a finished run leaves no state
    cfg = tiny_config(tmp_path / "run" / "cfg.yaml", bench, **settings)
    state = tmp_path / "run" / "models" / "example-random_init_ft_all_resume.pth"
    # 1) SIGTERM: the step finishes, the state is saved, exit code 143.
    proc = _finetune_process(cfg)
    _wait_for_state(state, proc, 2)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 143, out[-2000:]
    assert "continue with resume=auto" in out
    stopped_at = torch.load(state, weights_only=True)["step"]
    assert 2 <= stopped_at < 16
    # 2) resume=auto, then SIGKILL a few steps later: the periodic state survives.
    proc = _finetune_process(cfg, "resume=auto")
    _wait_for_state(state, proc, stopped_at + 2)
    workers = live_children(proc.pid)  # the DataLoader worker
    proc.kill()
    proc.wait(timeout=60)
    assert workers and still_alive_after(workers, 30) == []  # no worker outlives the killed run
    killed_at = torch.load(state, weights_only=True)["step"]
    assert killed_at >= stopped_at + 2
    # 3) resume=auto to the end: the same weights, bit for bit, as the run that was never interrupted.
    proc = _finetune_process(cfg, "resume=auto")
    out = proc.communicate(timeout=240)[0]
    assert proc.returncode == 0, out[-2000:]
    assert f"at step {killed_at + 1} of 16" in out
    assert not state.exists()
    final = torch.load(tmp_path / "run" / "models" / "example-random_init_ft_all_epoch16_of_16.pth",
                       weights_only=True)
    reference = torch.load(clean["checkpoint"], weights_only=True)
    assert [k for k, v in reference["state_dict"].items() if not torch.equal(final["state_dict"][k], v)] == []
