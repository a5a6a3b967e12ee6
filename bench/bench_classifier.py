"""Throughput of the informative-patch filter (prints figures side by side; no asserts).

    .venv/bin/python bench/bench_classifier.py [--batch-size 8] [--batches 2] [--device cpu]

- nn: our scoring pipeline (list of uint8 patches -> gray->RGB, normalise, ResNet34, sigmoid) versus the bare
  model forward on a ready float tensor, same batch size, runs interleaved; target >= 85% of the bare rate.
- features: the label-free default (features + rules), 1 and 2 threads.
- classify_patches end to end (features method, tiff output) on a synthetic shard.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402

from cellemnet.dataset.classify import classify_patches  # noqa: E402
from cellemnet.dataset.quality import (  # noqa: E402
    FeatureScorer,
    NNScorer,
    build_resnet34_classifier,
    nn_preprocess,
)
from cellemnet.dataset.store import write_shard  # noqa: E402
from cellemnet.runtime import autocast  # noqa: E402
from cellemnet.synthetic import make_image  # noqa: E402


def make_patches(n: int, size: int = 224) -> list[np.ndarray]:
    img, _ = make_image((size * 4, size * 4), look="tem", seed=0)
    tiles = [img[y:y + size, x:x + size] for y in range(0, 4 * size, size) for x in range(0, 4 * size, size)]
    return [tiles[i % len(tiles)] for i in range(n)]


def bench_nn(batch_size: int, n_batches: int, device: str) -> None:
    import torch

    torch.manual_seed(0)
    scorer = NNScorer(model=build_resnet34_classifier(), device=device, batch_size=batch_size)
    model, dev = scorer.model, scorer.device
    patches = make_patches(batch_size * n_batches)
    ready = nn_preprocess(patches[:batch_size], dev, channels_last=scorer.channels_last)

    def bare() -> None:
        with torch.inference_mode(), autocast(dev):
            for _ in range(n_batches):
                out = model(ready)
            if dev.type == "cuda":
                torch.cuda.synchronize()
        return out

    def pipeline() -> None:
        scorer.score(patches)

    bare(), pipeline()  # warm-up
    t_bare, t_pipe, c_bare, c_pipe = [], [], [], []
    for _ in range(3):  # interleaved so that machine load hits both alike
        for func, wall, cpu in ((bare, t_bare, c_bare), (pipeline, t_pipe, c_pipe)):
            t, c = time.perf_counter(), time.process_time()
            func()
            wall.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
    n = batch_size * n_batches
    r_bare, r_pipe = n / min(t_bare), n / min(t_pipe)
    cpu_ratio = min(c_bare) / min(c_pipe)
    print(f"nn ResNet34 on {dev}, batch {batch_size}, {n} patches 224x224, torch threads {torch.get_num_threads()}")
    print(f"  bare model forward          {r_bare:8.1f} patches/s")
    print(f"  our pipeline (uint8 -> p)   {r_pipe:8.1f} patches/s")
    print(f"  ratio pipeline / bare       {r_pipe / r_bare:8.1%}   (wall, best of 3; target >= 85%)")
    print(f"  ratio by CPU time           {cpu_ratio:8.1%}   (steadier on a shared machine)")


def bench_features() -> None:
    patches = make_patches(256)
    for workers in (1, 2):
        scorer = FeatureScorer(workers=workers)
        scorer.score(patches[:8])
        best = min(_timed(lambda: scorer.score(patches)) for _ in range(3))
        print(f"features default rules, {workers} thread(s): {len(patches) / best:8.1f} patches/s "
              f"({best / len(patches) * 1000:.2f} ms/patch)")


def bench_classify_end_to_end() -> None:
    patches = make_patches(256)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        names = [f"bench-LOC-0_{i}_0-224_0-224" for i in range(len(patches))]
        write_shard(tmp / "shards" / "bench.h5", names, patches, np.zeros(len(patches), np.uint64))
        t = time.perf_counter()
        r = classify_patches(tmp / "shards", tmp / "out", workers=2, progress=False, log=lambda *_: None)
        dt = time.perf_counter() - t
    print(f"classify_patches features, tiff, -p 2: {r.n_patches} patches in {dt:.2f} s "
          f"({r.n_patches / dt:.0f} patches/s, kept {r.n_kept})")


def _timed(func) -> float:
    t = time.perf_counter()
    func()
    return time.perf_counter() - t


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--batches", type=int, default=2)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    bench_features()
    bench_classify_end_to_end()
    bench_nn(args.batch_size, args.batches, args.device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
