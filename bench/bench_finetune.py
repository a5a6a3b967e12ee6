"""Fine-tuning speed: a step of cellemnet.evaluation.train.finetune vs the bare compute of the same model, side by side.

bare     = forward + backward + AdamW step of the same U-Net (same encoder, same frozen layers, same optimizer
           settings) on one ready batch already in memory;
finetune = one step of `finetune()` (what evaluation/finetune.py runs): the next batch from the DataLoader
           (reading, augmenting, collating), train mode, forward, loss, backward, AdamW, the loss/IoU meters,
           the scheduler, as timed by finetune itself (`step_seconds`).
Data: a synthetic benchmark of full-size slices (default 768 x 1024, like Lucchi++), native-scale 256 x 256 crops
with the usual rotations, flips and brightness/contrast. Rounds alternate the two so that load changes hit both
alike, and both build a fresh model every round; the figures are medians over the rounds' steps (each round's
first steps are warm-up and dropped).
The goal on the CPU is finetune / bare <= 1.15.

    .venv/bin/python bench/bench_finetune.py                       # batch 4 x 256^2, ResNet-50, jobs 0
    .venv/bin/python bench/bench_finetune.py --finetune-layer none --jobs 1 --rounds 3 --steps 6
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import yaml  # noqa: E402

from cellemnet.evaluation.augment import build_train_transforms  # noqa: E402
from cellemnet.evaluation.config import load_eval_config  # noqa: E402
from cellemnet.evaluation.data import SegmentationDataset  # noqa: E402
from cellemnet.evaluation.model import build_unet, freeze_encoder, set_train_mode  # noqa: E402
from cellemnet.evaluation.train import (  # noqa: E402
    finetune,
    make_loss,
    make_optimizer,
)
from cellemnet.evaluation.weights import resolve_pretraining  # noqa: E402
from cellemnet.synthetic import make_benchmark  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
AUGMENTATIONS = [
    {"aug": "PadIfNeeded", "min_height": 256, "min_width": 256},
    {"aug": "RandomCrop", "height": 256, "width": 256},
    {"aug": "Rotate", "limit": 180},
    {"aug": "RandomBrightnessContrast", "brightness_limit": 0.3, "contrast_limit": 0.3},
    {"aug": "HorizontalFlip"},
    {"aug": "VerticalFlip"},
]


def make_config(work: Path, data: Path, args) -> dict:
    cfg = yaml.safe_load((ROOT / "evaluation" / "configs" / "example.yaml").read_text())
    cfg.update({
        "data_dir": str(data), "model_dir": str(work / "models"), "bsz": args.batch, "jobs": args.jobs,
        "encoder": args.encoder, "finetune_layer": args.finetune_layer, "iters": args.steps, "logging": False,
        "num_save_checkpoints": 0, "num_prints": 1, "augmentations": AUGMENTATIONS, "device": "cpu",
    })
    path = work / "bench_finetune.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return load_eval_config(path, stage="train")


def bare_runner(config: dict):
    """The same model, frozen layers and optimizer as finetune builds, stepping on one ready batch."""
    weights = resolve_pretraining(config["pretraining"], config["norms"], encoder=config["encoder"])
    model = build_unet(config["num_classes"], weights, config["encoder"], decoder_seed=config["seed"])
    freeze_encoder(model, config["finetune_layer"], config["unfreeze_encoder_bn"])
    set_train_mode(model)
    optimizer = make_optimizer(config, [p for p in model.parameters() if p.requires_grad])
    loss_fn = make_loss(config, torch.device("cpu"))
    dataset = SegmentationDataset(Path(config["data_dir"]) / "train",
                                  build_train_transforms(config["augmentations"], weights.norms, seed=0),
                                  weights.in_channels, config["num_classes"])
    items = [dataset[i % len(dataset)] for i in range(config["bsz"])]
    x = torch.stack([it["image"] for it in items])
    y = torch.stack([it["mask"] for it in items])

    def step() -> float:
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        return time.perf_counter() - t0

    return step


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--encoder", default="resnet50", choices=("resnet18", "resnet34", "resnet50"))
    parser.add_argument("--finetune-layer", default="all", help="all (random init's protocol) or none (frozen)")
    parser.add_argument("--jobs", type=int, default=0, help="DataLoader workers of the finetune side")
    parser.add_argument("--shape", type=int, nargs=2, default=(768, 1024), help="training image size (h w)")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--steps", type=int, default=6, help="finetune steps per round (the first is warm-up)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1, help="steps dropped at the start of each round")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        make_benchmark(work / "data", n_train=args.images, n_test=1, shape=tuple(args.shape), n_valid=0,
                       n_test3d=0)
        config = make_config(work, work / "data", args)
        print(f"CPU, {torch.get_num_threads()} threads; U-Net-{args.encoder}, batch {args.batch} x 1 x 256^2 from "
              f"{args.shape[0]}x{args.shape[1]} images, finetune_layer {args.finetune_layer}, jobs {args.jobs}; "
              f"{args.rounds} rounds of {args.steps} steps, first {args.warmup} of each dropped")
        t_bare, t_ft = [], []
        for r in range(args.rounds):  # interleaved so that load changes hit both alike
            bare = bare_runner(config)  # a fresh model each round, as finetune builds one (same memory history)
            t_bare += [bare() for _ in range(args.steps)][args.warmup:]
            del bare
            out = finetune(dict(config), progress=False)
            t_ft += out["step_seconds"][args.warmup:]
            print(f"  round {r + 1}: bare {statistics.median(t_bare[-(args.steps - args.warmup):]):.3f} s/step, "
                  f"finetune {statistics.median(out['step_seconds'][args.warmup:]):.3f} s/step")
        bare_s, ft_s = statistics.median(t_bare), statistics.median(t_ft)
        print(f"bare forward+backward+AdamW: {bare_s:.3f} s/step ({args.batch / bare_s:.1f} img/s) | finetune step: "
              f"{ft_s:.3f} s/step ({args.batch / ft_s:.1f} img/s) | ratio {ft_s / bare_s:.3f} (goal <= 1.15)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
