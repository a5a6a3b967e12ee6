"""Pretraining speed: one full MoCoV2 training step vs the bare ResNet-50 compute it needs, side by side.

bare  = forward+backward of the query encoder + forward (no grad) of the key encoder on the same batch;
moco  = the whole training step of cellemnet.pretraining (EMA update, shuffle-BN path, 65,536-key queue logits,
        InfoNCE, SGD step, enqueue).
The goal on the CPU is moco / bare <= 1.2. On a GPU the same is measured with AMP off and on (bf16/fp16) and
channels_last. Optionally (--swav) one SwAV step (2x224 + 6x96 crops at the same batch) is timed too.

    .venv/bin/python bench/bench_pretraining.py --batch 8 --size 224 --reps 5
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from cellemnet import runtime  # noqa: E402
from cellemnet.pretraining.methods import MoCoV2Method, SwAVMethod  # noqa: E402
from cellemnet.pretraining.models import MoCo, SwAV  # noqa: E402


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time(fn, device, reps: int) -> list[float]:
    times = []
    for _ in range(reps):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def moco_run(cfg, device, amp: bool, channels_last: bool):
    method = MoCoV2Method(cfg)
    model = MoCo("resnet50", 128, 65536, 0.999, 0.2, True).to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    opt = method.build_optimizer(model)
    run = SimpleNamespace(device=device, amp=amp, channels_last=channels_last, model=model, unwrapped=model,
                          optimizer=opt, scaler=runtime.make_grad_scaler(device, amp), global_step=0)
    return method, model, run


def bench(device, batch: int, size: int, reps: int, amp: bool, swav: bool) -> dict:
    channels_last = device.type == "cuda"
    cfg = {"lr": 0.015, "momentum": 0.9, "weight_decay": 1e-4, "moco_t": 0.2}
    method, model, run = moco_run(cfg, device, amp, channels_last)
    im_q = torch.randn(batch, 1, size, size)
    im_k = torch.randn(batch, 1, size, size)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    q_dev = im_q.to(device).contiguous(memory_format=fmt)
    k_dev = im_k.to(device).contiguous(memory_format=fmt)

    def bare():
        with runtime.autocast(device, amp):
            out = model.encoder_q(q_dev)
            with torch.no_grad():
                model.encoder_k(k_dev)
        out.float().sum().backward()
        model.encoder_q.zero_grad(set_to_none=True)

    def full():
        method.step((im_q, im_k), run)

    for fn in (bare, full):  # warm-up (allocations, cudnn autotuning)
        fn()
        fn()
    t_bare, t_full = [], []
    for _ in range(reps):  # interleaved so that load changes hit both alike
        t_bare += _time(bare, device, 1)
        t_full += _time(full, device, 1)
    out = {"bare_s": statistics.median(t_bare), "moco_s": statistics.median(t_full)}
    out["ratio"] = out["moco_s"] / out["bare_s"]
    out["bare_img_s"] = batch / out["bare_s"]
    out["moco_img_s"] = batch / out["moco_s"]
    if swav:
        del model, run
        smethod = SwAVMethod({"crops_for_assign": [0, 1], "temperature": 0.1, "epsilon": 0.05,
                              "sinkhorn_iterations": 3, "freeze_prototypes_niters": 0, "weight_decay": 1e-6,
                              "trust_coefficient": 0.001, "lr": 0.6, "momentum": 0.9})
        smodel = SwAV("resnet50", 2048, 128, 3000).to(device)
        if channels_last:
            smodel.to(memory_format=torch.channels_last)
        srun = SimpleNamespace(device=device, amp=amp, channels_last=channels_last, model=smodel,
                               unwrapped=smodel, optimizer=smethod.build_optimizer(smodel),
                               scaler=runtime.make_grad_scaler(device, amp), global_step=0)
        crops = [torch.randn(batch, 1, 224, 224)] * 2 + [torch.randn(batch, 1, 96, 96)] * 6
        smethod.step(crops, srun)
        t_swav = _time(lambda: smethod.step(crops, srun), device, reps)
        out["swav_s"] = statistics.median(t_swav)
        out["swav_img_s"] = batch / out["swav_s"]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--swav", action="store_true", help="also time one SwAV multi-crop step")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = runtime.select_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; batch {args.batch} x 1 x {args.size}^2, median of {args.reps}")
    settings = [False] if device.type != "cuda" else [False, True]
    for amp in settings:
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        r = bench(device, args.batch, args.size, args.reps, amp, args.swav)
        label = f"amp={'on (' + str(runtime.amp_dtype(device)).replace('torch.', '') + ')' if amp else 'off'}"
        print(f"[{label}] bare ResNet-50 q fwd+bwd + k fwd: {r['bare_s']:.3f} s/step ({r['bare_img_s']:.1f} img/s) | "
              f"MoCoV2 step: {r['moco_s']:.3f} s/step ({r['moco_img_s']:.1f} img/s) | ratio {r['ratio']:.3f} "
              f"(goal <= 1.2 on the CPU)")
        if args.swav:
            print(f"[{label}] SwAV step 2x224+6x96: {r['swav_s']:.3f} s/step ({r['swav_img_s']:.1f} img/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
