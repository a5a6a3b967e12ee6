"""Which augmentation stops a short MoCoV2 run from learning? One in-process run per call, health every N steps.

The runs in pretraining/README.md ("A recipe for a CPU") came from this script on the 1,077 real EM patches that
bench/bench_ssl_real_em.py cuts (128 px): ResNet-18, 64 px views, batch 64, K 256, m 0.99, t 0.2, BN head,
shuffled BN in 4 chunks, SGD with a cosine lr; the health set and measures are cellemnet.pretraining.health's.

    .venv/bin/python bench/bench_ssl_augment.py --data /tmp/ssl/patches --steps 60              # paper augmentation
    .venv/bin/python bench/bench_ssl_augment.py --data /tmp/ssl/patches --steps 150 --drop jitter --probe BENCH
    .venv/bin/python bench/bench_ssl_augment.py --data DIR --drop rot,blur,noise | --standardize | --float-jitter 0.4

--drop removes steps of the paper's view pipeline (rot, jitter, blur, noise); --float-jitter replaces the uint8
ColorJitter by the same brightness/contrast change in float after scaling (no clipping); --probe BENCH scores the
final trunk with the linear probe (cellemnet.evaluation.probe) on a benchmark folder against random encoders.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torchvision.transforms import v2  # noqa: E402

from cellemnet.evaluation.probe import ProbeSettings, load_probe_data, probe_trunk  # noqa: E402
from cellemnet.io import read_image  # noqa: E402
from cellemnet.pretraining import health  # noqa: E402
from cellemnet.pretraining.augment import view_transform  # noqa: E402
from cellemnet.pretraining.losses import infonce_loss, topk_accuracy  # noqa: E402
from cellemnet.pretraining.models import MoCo  # noqa: E402

MEAN, STD = 0.57287007, 0.12740536
STEP_NAMES = {"rot": "RandomApply(RandomRotation)", "jitter": "ColorJitter", "blur": "RandomApply(GaussianBlur)",
              "noise": "RandomGaussianNoise"}


class FloatJitter(torch.nn.Module):
    """Brightness x b and contrast x c around the view's mean, b, c ~ U(1 - s, 1 + s), in float: nothing clips."""

    def __init__(self, strength: float):
        super().__init__()
        self.strength = strength

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = (1 + self.strength * (2 * float(torch.rand(())) - 1) for _ in range(2))
        m = x.mean()
        return (x - m) * c + m * b


def _kind(t) -> str:
    if isinstance(t, v2.RandomApply):
        return f"RandomApply({type(t.transforms[0]).__name__})"
    return type(t).__name__


def build_view(args) -> v2.Compose:
    steps = list(view_transform(args.crop, tuple(args.scale), MEAN, STD, args.standardize).transforms)
    dropped = {STEP_NAMES[d] for d in args.drop.split(",") if d}
    if args.float_jitter:
        dropped.add("ColorJitter")
    steps = [t for t in steps if _kind(t) not in dropped]
    if args.float_jitter:
        at = next(i for i, t in enumerate(steps) if isinstance(t, v2.ToDtype)) + 1
        steps.insert(at, FloatJitter(args.float_jitter))
    print("view:", " -> ".join(_kind(t) for t in steps), flush=True)
    return v2.Compose(steps)


class Patches(torch.utils.data.Dataset):
    def __init__(self, images, view):
        self.images, self.view = images, view

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.view(self.images[i]), self.view(self.images[i])

    def read(self, i):
        return self.images[i][0].numpy()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="folder of patch TIFFs (searched recursively)")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--lr", type=float, default=0.06)
    p.add_argument("--crop", type=int, default=64)
    p.add_argument("--scale", type=float, nargs=2, default=(0.2, 1.0))
    p.add_argument("--k", type=int, default=256)
    p.add_argument("--m", type=float, default=0.99)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--drop", default="", help="comma list of rot, jitter, blur, noise")
    p.add_argument("--standardize", action="store_true", help="each view by its own mean and std")
    p.add_argument("--float-jitter", type=float, default=0.0)
    p.add_argument("--health-every", type=int, default=50)
    p.add_argument("--probe", type=Path, default=None, help="benchmark folder for the final linear probe")
    args = p.parse_args()
    torch.manual_seed(0)
    files = sorted(args.data.rglob("*.tif")) + sorted(args.data.rglob("*.tiff"))
    if not files:
        raise SystemExit(f"{args.data}: no .tif/.tiff patches")
    images = [torch.from_numpy(np.ascontiguousarray(read_image(f)))[None] for f in files]
    view = build_view(args)
    data = Patches(images, view)
    pair = lambda x: (view(x), view(x))  # noqa: E731 - the health set's two views
    health_set = health.make_health_set(data, pair, 256, 1)
    model = MoCo("resnet18", 128, args.k, args.m, 0.2, True, True, 4)
    params = [q for q in model.parameters() if q.requires_grad]
    opt = torch.optim.SGD(params, lr=args.lr, momentum=0.9, weight_decay=1e-4)
    loader = torch.utils.data.DataLoader(data, batch_size=args.batch, shuffle=True, drop_last=True, num_workers=1,
                                         persistent_workers=True)
    print(f"{len(images)} patches; loss chance level ln(K+1) = {math.log(args.k + 1):.2f}", flush=True)

    def report(step: int) -> None:
        r = health.measure(model, health_set, torch.device("cpu"))
        print(f"  health at step {step}: retrieval {r['retrieval']:.3f}, gap {r['sim_gap']:.3f}, spread "
              f"{r['spread']:.2f}, rank {r['feature_rank']:.1f}, conv1 mean energy {r['conv1_mean_energy']:.2f}",
              flush=True)

    report(0)
    step, started, losses, tops = 0, time.time(), [], []
    while step < args.steps:
        for q, k in loader:
            for g in opt.param_groups:
                g["lr"] = args.lr * 0.5 * (1 + math.cos(math.pi * step / args.steps))
            model.train()
            logits, keys = model(q, k)
            loss = infonce_loss(logits)
            opt.zero_grad()
            loss.backward()
            opt.step()
            model.dequeue_and_enqueue(keys)
            losses.append(loss.item())
            tops.append(topk_accuracy(logits.detach(), torch.zeros(len(logits), dtype=torch.long))[0])
            step += 1
            if step % 10 == 0:
                print(f"step {step}: loss {np.mean(losses[-10:]):.3f}, top1 {np.mean(tops[-10:]):.1f} % "
                      f"({(time.time() - started) / step:.2f} s/step)", flush=True)
            if step % args.health_every == 0 or step == args.steps:
                report(step)
            if step >= args.steps:
                break
    if args.probe is not None:
        bench = load_probe_data(args.probe, max_train_images=8, max_test_images=6)
        r = probe_trunk(model.encoder_q, "resnet18", bench, {"mean": [MEAN], "std": [STD]},
                        settings=ProbeSettings(seeds=(0, 1)))
        print(f"probe IoU {r.encoder_mean:.4f} (random: {r.random_mean:.4f}, difference: {r.difference_mean:+.4f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
