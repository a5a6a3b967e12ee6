"""Does pretraining on real, unlabeled EM help? SSL encoder vs random on ISBI 2012 membranes with few labels.

1. Unlabeled real EM from ../shared/data (ISBI 2012 train + test images, the CEM500K example crops, the cryo-ET
   tomogram) cut into 128 px patches (no labels are read).
2. MoCoV2 with `pretraining/configs/mocov2_small.yaml` (ResNet-18) for `--epochs` epochs, with the online probe on
   the ISBI benchmark below; its verdict is printed. The encoder is exported (with --force if it did not learn,
   and the table says so).
3. ISBI 2012 membranes as a benchmark with `--n-train` labeled slices (the first ones) and 6 held-out test slices.
   Over `--seeds` seeds, each arm gets the same seed (same decoder init, same data order):
   - probe: evaluation/probe_encoder.py (frozen encoder, per-pixel linear head) vs frozen random encoders;
   - U-Net, encoder frozen: SSL vs random;
   - U-Net, trained end to end: SSL vs random.
   Mean +- sd per arm and the paired difference (SSL - random) are printed as a markdown table.

    .venv/bin/python bench/bench_ssl_real_em.py --out /tmp/ssl_real_em            # ~40 min on 2 cores
    .venv/bin/python bench/bench_ssl_real_em.py --out /tmp/ssl_quick --epochs 2 --iters 20 --seeds 0 1
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from cellemnet.evaluation.examples import layout_isbi2012  # noqa: E402
from cellemnet.evaluation.infer import RESULT_NAME, read_result  # noqa: E402
from cellemnet.io import read_image, read_volume, to_uint8, write_image  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"


def cut_patches(out: Path, size: int = 128) -> int:
    """Unlabeled 128 px patches from every real EM source in ../shared/data; returns the count."""
    n = 0
    for split in ("train", "test"):
        for f in sorted((SHARED / "isbi2012" / split / "images").glob("*.png")):
            image = read_image(f)
            for y in range(0, image.shape[0] - size + 1, size):
                for x in range(0, image.shape[1] - size + 1, size):
                    write_image(out / "isbi" / f"{split}_{f.stem}_{y}_{x}.tif", image[y:y + size, x:x + size])
                    n += 1
    cem = sorted((SHARED / "cem-examples").glob("*/images/*.png"))
    cem += sorted((SHARED / "cem-examples" / "occlusion").glob("*"))
    for f in cem:
        image = read_image(f)
        if image.ndim != 2 or min(image.shape) < size:
            continue
        for y in range(0, image.shape[0] - size + 1, size // 2):
            for x in range(0, image.shape[1] - size + 1, size // 2):
                write_image(out / "cem" / f"{f.stem}_{y}_{x}.tif", image[y:y + size, x:x + size])
                n += 1
    volume = read_volume(SHARED / "cryoet" / "tomo.tif")
    volume = to_uint8(np.asarray(volume[0] if isinstance(volume, tuple) else volume))
    for z in range(0, volume.shape[0], 2):
        write_image(out / "cryoet" / f"z{z:03d}.tif", volume[z, :size, :size])
        n += 1
    return n


def run(args: list[str], log: Path) -> str:
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True)
    log.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(args)}\n{(proc.stdout + proc.stderr)[-2000:]}")
    return proc.stdout


def test_iou(save_dir: Path) -> float:
    """Test_Set_IoU from the result.json inference2d.py writes beside its predictions (never parsed from stdout)."""
    return read_result(save_dir / RESULT_NAME)["metrics"]["Test_Set_IoU"]


def mean_sd(values) -> str:
    values = list(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {sd:.3f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=12, help="pretraining epochs (16 steps of 64 each)")
    parser.add_argument("--iters", type=int, default=80, help="fine-tuning iterations per run")
    parser.add_argument("--n-train", type=int, default=4, help="labeled ISBI slices for fine-tuning")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    out = args.out.resolve()
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    patches = out / "patches"
    if not patches.is_dir():
        print(f"{cut_patches(patches)} unlabeled patches", flush=True)
    bench = out / "isbi_bench"
    if not bench.is_dir():
        layout_isbi2012(SHARED / "isbi2012", bench, n_test=6, n_train=args.n_train)

    model_dir = out / "pretraining"
    started = time.time()
    pre = run(["pretraining/train_mocov2.py", "pretraining/configs/mocov2_small.yaml", f"data_path={patches}",
               f"model_dir={model_dir}", f"epochs={args.epochs}", f"save_freq={args.epochs}", "logging=false",
               "resume=auto", f"probe_data={bench}"], logs / "pretrain.log")
    pretrain_s = time.time() - started
    verdict = json.loads((model_dir / "health.json").read_text())["verdict"]
    print(next(line for line in pre.splitlines()[::-1] if "verdict:" in line), flush=True)
    encoder = out / "ssl" / "encoder.pth"
    run(["pretraining/export_encoder.py", str(model_dir / "current.pth"), str(encoder), "--force"], logs / "export.log")

    run(["evaluation/probe_encoder.py", str(encoder), str(bench), "arch=resnet18", f"out={out / 'probe'}",
         f"seeds={args.seeds}"], logs / "probe.log")
    probe = json.loads((out / "probe" / "result.json").read_text())

    config = "evaluation/configs/isbi2012.yaml"
    scores: dict[tuple[str, str], dict[int, float]] = {}
    for seed in args.seeds:
        for protocol, layer in (("frozen", "none"), ("end to end", "all")):
            for arm, pretraining in (("random", "random_init"), ("SSL", str(encoder))):
                tag = f"{arm}_{layer}_seed{seed}"
                common = [f"data_dir={bench}", f"test_dir2d={bench / 'test'}", f"model_dir={out / 'ft' / tag}",
                          f"pretraining={pretraining}", "encoder=resnet18", f"finetune_layer={layer}",
                          f"seed={seed}", f"iters={args.iters}", "logging=false",
                          f"save_dir2d={out / 'pred' / tag}"]
                run(["evaluation/finetune.py", config, *common], logs / f"ft_{tag}.log")
                ckpt = max((out / "ft" / tag).glob("*.pth"), key=lambda p: p.stat().st_mtime)
                run(["evaluation/inference2d.py", config, str(ckpt), *common], logs / f"inf_{tag}.log")
                iou = test_iou(out / "pred" / tag)
                scores.setdefault((protocol, arm), {})[seed] = iou
                print(f"{protocol:10s} {arm:6s} seed {seed}: Test_Set_IoU {iou:.3f}", flush=True)

    label = "learned" if verdict["learned"] else f"did not learn ({verdict['reason']})"
    print(f"\n{len(list(patches.glob('*/*.tif')))} unlabeled patches, pretraining {pretrain_s / 60:.1f} min, "
          f"verdict: {label}; {args.n_train} labeled ISBI slices, {args.iters} fine-tuning iterations, "
          f"seeds {args.seeds}; total {(time.time() - t0) / 60:.1f} min\n")
    print("| ISBI 2012 membranes | random encoder | SSL encoder | paired difference (SSL - random) |")
    print("|---|---|---|---|")
    print(f"| probe IoU (frozen, linear) | {probe['random_mean']:.3f} ± {probe['random_sd']:.3f} | "
          f"{probe['encoder_mean']:.3f} ± {probe['encoder_sd']:.3f} | "
          f"{probe['difference_mean']:+.3f} ± {probe['difference_sd']:.3f} |")
    for protocol in ("frozen", "end to end"):
        r, s = scores[(protocol, "random")], scores[(protocol, "SSL")]
        diffs = [s[k] - r[k] for k in args.seeds]
        sd = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
        print(f"| U-Net, encoder {protocol} | {mean_sd(r.values())} | {mean_sd(s.values())} | "
              f"{statistics.mean(diffs):+.3f} ± {sd:.3f} |")
    (out / "results.json").write_text(json.dumps({"verdict": verdict, "probe": probe, "pretrain_seconds": pretrain_s,
                                                  "scores": {f"{p}|{a}": v for (p, a), v in scores.items()}},
                                                 indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
