"""`predict` on volumes: agreement with the in-memory evaluation stage, and memory on a 2 GiB volume.

agreement: fine-tunes a ResNet-18 U-Net on the synthetic benchmark (evaluation/finetune.py, --iters steps), then
  segments a synthetic volume that fits in memory twice, in orthoplane mode: in memory as inference3d.py does
  (Predictor.predict_volume, labels_from_probabilities) and block by block with `predict` (in-plane tiling,
  the default halo). Prints the Dice of the thresholded masks (the block-wise one from its uint8 probabilities),
  the mean absolute difference of the probabilities (x255) and the two times side by side.
memory: writes a uint8 Zarr volume chunk by chunk (default 512 x 2048 x 2048 = 2 GiB; never held in memory),
  runs `evaluation/predict.py` on it in a fresh process with the default block, halo and batch (--max-blocks
  blocks: the 6th is the first with a full halo on every side; the rest is left for a re-run), then runs the same
  settings to completion (pyramid included) on a 64 x 1280 x 1280 volume (100 MiB, 9 blocks, one interior), and
  prints both result.json memory figures: peak RSS above the loaded model, set by the block, not the volume.

    python bench/bench_predict.py [all]   # both parts, as in bench/RESULTS.md
    python bench/bench_predict.py agreement [--iters 150] [--shape 112 192 192] [--block 64 96 96]
    python bench/bench_predict.py memory [--shape 512 2048 2048] [--max-blocks 6] [--mode stack] [--model PTH]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")

import numpy as np  # noqa: E402

from cellemnet.synthetic import make_benchmark, make_volume  # noqa: E402


def train_model(out: Path, iters: int, given: str | None = None) -> Path:
    """A ResNet-18 U-Net fine-tuned from random init on the synthetic benchmark (the example config)."""
    if given:
        return Path(given)
    model_dir = out / "models"
    found = sorted(model_dir.glob("*.pth")) if model_dir.is_dir() else []
    if found:
        return found[-1]
    make_benchmark(out / "data", n_train=8, n_valid=1, n_test=1)
    cmd = [sys.executable, str(ROOT / "evaluation" / "finetune.py"), str(ROOT / "evaluation/configs/example.yaml"),
           f"data_dir={out / 'data'}", f"test_dir2d={out / 'data/test2d'}", f"test_dir3d={out / 'data/test3d'}",
           f"model_dir={model_dir}", "encoder=resnet18", f"iters={iters}", "bsz=4", "logging=false",
           "precise_bn=0", "num_prints=4"]
    subprocess.run(cmd, check=True)
    return sorted(model_dir.glob("*.pth"))[-1]


def agreement(args) -> None:
    from cellemnet.evaluation.blockwise import load_model, predict
    from cellemnet.evaluation.predict import labels_from_probabilities
    from cellemnet.io import open_volume, write_volume

    out = Path(args.out)
    model = train_model(out, args.iters, args.model)
    predictor, metadata = load_model(model, "cpu")
    volume, _ = make_volume(tuple(args.shape), seed=11)
    write_volume(out / "volume.zarr", volume)
    started = time.perf_counter()
    probs = predictor.predict_volume(volume, "orthoplane", batch=4, progress=True)
    in_memory_s = time.perf_counter() - started
    threshold = metadata["thresholds"]["3d"]
    reference = labels_from_probabilities(probs, threshold)
    started = time.perf_counter()
    record = predict(model, out / "volume.zarr", out / "probabilities.ome.zarr", mode="orthoplane",
                     block=tuple(args.block), loaded=(predictor, metadata))
    blockwise_s = time.perf_counter() - started
    with open_volume(out / "probabilities.ome.zarr") as r:
        blockwise = r.read().astype(np.float32) / 255
    a, b = reference > 0, blockwise > threshold  # the block-wise mask: its stored probabilities thresholded
    dice = 2.0 * (a & b).sum() / max(a.sum() + b.sum(), 1)
    mad = float(np.abs(blockwise - probs[0]).mean())
    print(json.dumps({
        "model": str(model), "volume": list(volume.shape), "block": list(args.block), "halo": record["how"]["halo"],
        "blocks": record["blocks"]["total"], "foreground_fraction": float(a.mean()), "dice": round(float(dice), 5),
        "mad_x255": round(mad * 255, 3), "max_abs_diff_x255": round(float(np.abs(blockwise - probs[0]).max()) * 255, 1),
        "in_memory_s": round(in_memory_s, 1), "blockwise_s": round(blockwise_s, 1),
        "blockwise_over_in_memory": round(blockwise_s / in_memory_s, 2)}, indent=2))


def write_big_volume(path: Path, shape: tuple[int, int, int]) -> None:
    """A uint8 Zarr volume written slab by slab from a tiled synthetic volume (never whole in memory)."""
    import zarr

    if path.exists():
        return
    tile, _ = make_volume((64, 512, 512), seed=3)
    array = zarr.create_array(str(path), shape=shape, dtype="uint8", chunks=(1, 1024, 1024))
    for z in range(0, shape[0], 64):
        depth = min(64, shape[0] - z)
        slab = np.tile(tile[:depth], (1, -(-shape[1] // 512), -(-shape[2] // 512)))[:, : shape[1], : shape[2]]
        array[z : z + depth] = slab
        print(f"wrote slices {z}..{z + depth} of {shape[0]}", flush=True)


def run_predict(model: Path, volume: Path, output: Path, settings: list[str]) -> dict:
    cmd = [sys.executable, str(ROOT / "evaluation" / "predict.py"), str(model), str(volume), str(output), *settings]
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    return json.loads((output.parent / "result.json").read_text())


def memory(args) -> None:
    out = Path(args.out)
    model = train_model(out, args.iters, args.model)
    big = out / f"big_{'x'.join(map(str, args.shape))}.zarr"
    write_big_volume(big, tuple(args.shape))
    small = out / "small.zarr"
    write_big_volume(small, tuple(args.small_shape))
    settings = [f"mode={args.mode}", "output=probabilities"]
    rows = {}
    for name, volume, extra in (("big", big, [f"max_blocks={args.max_blocks}"]), ("small", small, [])):
        folder = out / f"memory_{name}"
        folder.mkdir(parents=True, exist_ok=True)
        rows[name] = run_predict(model, volume, folder / "pred.ome.zarr", settings + extra)
    for name, r in rows.items():
        print(json.dumps({"run": name, "volume": r["input"]["shape"], "bytes": int(np.prod(r["input"]["shape"])),
                          "blocks": r["blocks"], "blocks_per_second": r["blocks_per_second"],
                          "memory_mb": r["memory_mb"], "seconds": r["seconds"], "complete": r["complete"],
                          "how": r["how"]}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", nargs="?", default="all", choices=("agreement", "memory", "all"))
    parser.add_argument("--model", default=None, help="a fine-tuning checkpoint to use instead of training one")
    parser.add_argument("--out", default=None, help="work folder, kept (default: a temporary one)")
    parser.add_argument("--iters", type=int, default=150)
    parser.add_argument("--shape", type=int, nargs=3, default=None)
    parser.add_argument("--small-shape", type=int, nargs=3, default=[64, 1280, 1280])
    parser.add_argument("--block", type=int, nargs=3, default=[64, 96, 96])
    parser.add_argument("--max-blocks", type=int, default=6)
    parser.add_argument("--mode", default="stack", choices=("stack", "orthoplane"))
    args = parser.parse_args()
    if args.out is None:
        with tempfile.TemporaryDirectory() as tmp:
            args.out = tmp
            return run_parts(args)
    return run_parts(args)


def run_parts(args) -> int:
    shape = args.shape
    if args.part in ("agreement", "all"):
        args.shape = shape or [112, 192, 192]
        agreement(args)
    if args.part in ("memory", "all"):
        args.shape = shape or [512, 2048, 2048]
        memory(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
