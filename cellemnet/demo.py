"""The whole pipeline in one command: `make demo` (= `python -m cellemnet.demo`).

It makes a small EM-like corpus with cellemnet.synthetic (or takes the user's folder, `--data PATH`), then runs the
stages one after the other, as a user would:

  curation     dataset/patchify2d.py, dataset/patchify3d.py, dataset/dedupe.py, dataset/classify_patches.py
  pretraining  pretraining/train_mocov2.py (a few minutes on the CPU), pretraining/export_encoder.py,
               evaluation/probe_encoder.py
  evaluation   for each seed and arm (random init end to end, pretrained frozen, random frozen): fine-tuning,
               2D and 3D inference - in this process, through the library functions evaluation/finetune.py,
               inference2d.py and inference3d.py call (each step's log starts with the equivalent command)

and writes `<out>/report.md` with figures beside it. Every MLflow run lands in `<out>/mlflow_store`.
A step that fails stops the demo with the step's name, its command and the end of its output; what earlier
steps wrote stays on disk, and re-running skips the steps whose outputs are complete.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from cellemnet.demo_report import write_report
from cellemnet.errors import CellEMNetError, InputError, cli_main
from cellemnet.evaluation.config import load_eval_config
from cellemnet.evaluation.infer import run_inference2d, run_inference3d
from cellemnet.evaluation.train import finetune
from cellemnet.io import atomic_write_bytes, is_volume_file
from cellemnet.pretraining.health import HEALTH_FILE
from cellemnet.synthetic import make_benchmark, make_corpus

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class DemoSize:
    """How big each part of the demo is; `small` is for CI, `default` for `make demo` (7-8.5 minutes on 2 cores
    after the set-up)."""

    n_groups_2d: int
    images_per_group: int
    n_volumes: int
    image_shape: tuple[int, int]
    volume_shape: tuple[int, int, int]
    pretrain_epochs: int
    pretrain_queue: int
    pretrain_batch: int
    pretrain_crop: int
    bench_train: int
    bench_shape: tuple[int, int]
    bench_volume: tuple[int, int, int]
    finetune_iters: int
    seeds: tuple[int, ...]


# The corpus is the unlabeled data pretraining learns from: SSL needs hundreds of distinct patches (the MoCo queue
# must stay under a quarter of them), so the default corpus holds ~1000 patches; the looks, the biology and the
# labeled benchmark are the same as with a handful of images.
SIZES = {
    "default": DemoSize(
        n_groups_2d=3, images_per_group=60, n_volumes=3, image_shape=(512, 512), volume_shape=(24, 256, 256),
        pretrain_epochs=10, pretrain_queue=128, pretrain_batch=64, pretrain_crop=64,
        bench_train=12, bench_shape=(256, 256), bench_volume=(16, 128, 128), finetune_iters=100, seeds=(0, 1, 2),
    ),
    "small": DemoSize(
        n_groups_2d=2, images_per_group=2, n_volumes=2, image_shape=(448, 448), volume_shape=(12, 224, 224),
        pretrain_epochs=2, pretrain_queue=4, pretrain_batch=8, pretrain_crop=32,
        bench_train=4, bench_shape=(128, 128), bench_volume=(8, 64, 64), finetune_iters=8, seeds=(0, 1),
    ),
}
@dataclass(frozen=True)
class Arm:
    """One arm of the comparison: a name (folders, report), the pretraining it starts from, the protocol."""

    key: str
    pretraining: str  # "random_init" or "pretrained" (the demo's exported encoder)
    finetune_layer: str  # "all": trained end to end; "none": encoder frozen, only the decoder trains


# The paper's protocol: the pretrained encoder frozen against random init trained end to end; and frozen vs frozen
# (a frozen random encoder), which isolates what the encoder's features are worth. Same seeds, same decoder init,
# same data order in every arm.
ARMS = (Arm("random_e2e", "random_init", "all"), Arm("pretrained_frozen", "pretrained", "none"),
        Arm("random_frozen", "random_init", "none"))
ENCODER_ARCH = "resnet18"  # what a CPU pretrains in minutes; the paper's resnet50 is the library default


@dataclass
class DemoState:
    out: Path
    size: DemoSize
    env: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    step_no: int = 0
    n_steps: int = 0


def _say(msg: str) -> None:
    print(msg, flush=True)


def _step(state: DemoState, title: str, log_name: str, command: str, work):
    """One numbered demo step: `work()` returns (result, output text, failure or None); the output goes to
    <out>/logs/<log_name>.log headed by `command`; a failure stops the demo with the step's name, the end of its
    output and the log's path."""
    state.step_no += 1
    log_path = state.out / "logs" / f"{log_name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    _say(f"[{state.step_no}/{state.n_steps}] {title} ...")
    start = time.perf_counter()
    result, output, failure = work()
    elapsed = time.perf_counter() - start
    log_path.write_text(f"$ {command}\n{output}")
    state.timings[title] = elapsed
    if failure is not None:
        tail = "\n".join(output.strip().splitlines()[-15:])
        raise CellEMNetError(f"demo step '{title}' failed: {failure}\n{tail}\nfull log: {log_path}")
    _say(f"      done in {elapsed:.0f} s")
    return result


def run_step(state: DemoState, title: str, args: list[str], log_name: str) -> str:
    """Run one stage script as a subprocess; its output is logged and returned."""
    cmd = [sys.executable, *args]

    def work():
        proc = subprocess.run(cmd, cwd=ROOT, env=state.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
        failure = f"exit {proc.returncode}; command: {shlex.join(cmd)}" if proc.returncode != 0 else None
        return proc.stdout, proc.stdout, failure

    return _step(state, title, log_name, shlex.join(cmd), work)


def prepare_inputs(state: DemoState, data: Path | None) -> tuple[Path, Path | None, Path]:
    """Return (2D image groups folder, volumes folder or None, benchmark folder)."""
    size = state.size
    raw = state.out / "raw"
    if data is not None:
        images2d, volumes = find_user_data(data)
    else:
        if not (raw / ".complete").exists():
            make_corpus(raw, n_groups_2d=size.n_groups_2d, images_per_group=size.images_per_group,
                        n_volumes=size.n_volumes, image_shape=size.image_shape, volume_shape=size.volume_shape, seed=0)
            (raw / ".complete").write_text("ok\n")
        images2d, volumes = raw / "images2d", raw / "volumes"
    bench = state.out / "benchmark"
    if data is not None and (data / "benchmark" / "train" / "images").is_dir():
        bench = data / "benchmark"
    elif not (bench / ".complete").exists():
        make_benchmark(bench, n_train=size.bench_train, n_test=3, shape=size.bench_shape,
                       volume_shape=size.bench_volume, seed=1, n_valid=2, n_test3d=1)
        (bench / ".complete").write_text("ok\n")
    return images2d, volumes, bench


def find_user_data(data: Path) -> tuple[Path | None, Path | None]:
    """A user's folder: `images2d/<project>/...` and/or `volumes/*`; else its subfolders are 2D projects and its
    volume files at the top level are volumes."""
    if not data.is_dir():
        raise InputError(f"{data}: --data must be a folder of 2D image folders and/or volumes")
    images2d = data / "images2d" if (data / "images2d").is_dir() else None
    volumes = data / "volumes" if (data / "volumes").is_dir() else None
    if images2d is None and volumes is None:
        subdirs = [p for p in data.iterdir() if p.is_dir() and p.name != "benchmark"]
        vols = [p for p in data.iterdir() if p.is_file() and is_volume_file(p)]
        images2d = data if subdirs else None
        volumes = data if vols else None
    if images2d is None and volumes is None:
        raise InputError(f"{data}: found neither 2D image folders nor volume files")
    return images2d, volumes


def run_curation(state: DemoState, images2d: Path | None, volumes: Path | None, shards: Path, curated: Path) -> None:
    """The four curation steps, as a user runs them: patchify 2D and 3D, de-duplicate across datasets, filter."""
    if images2d is not None:
        run_step(state, "curation: patchify 2D image groups",
                 ["dataset/patchify2d.py", str(images2d), str(shards / "2d")], "patchify2d")
    else:
        state.step_no += 1
    if volumes is not None:
        run_step(state, "curation: patchify 3D volumes",
                 ["dataset/patchify3d.py", str(volumes), str(shards / "3d")], "patchify3d")
    else:
        state.step_no += 1
    run_step(state, "curation: de-duplicate across datasets", ["dataset/dedupe.py", str(shards)], "dedupe")
    run_step(state, "curation: filter uninformative patches",
             ["dataset/classify_patches.py", str(shards), str(curated)], "classify")


def main_demo(out: Path, size_name: str, data: Path | None) -> dict:
    size = SIZES[size_name]
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update({
        "NO_ALBUMENTATIONS_UPDATE": "1", "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg", "PYTHONUNBUFFERED": "1",
        "TQDM_DISABLE": "1",
    })
    env.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{out / 'mlflow_store' / 'mlflow.db'}")
    (out / "mlflow_store").mkdir(exist_ok=True)
    os.environ["MLFLOW_TRACKING_URI"] = env["MLFLOW_TRACKING_URI"]  # the report reads the runs back
    state = DemoState(out=out, size=size, env=env, n_steps=8 + 3 * len(ARMS) * len(size.seeds))
    t0 = time.perf_counter()

    _say(f"CellEMNet demo ({size_name}) -> {out}")
    images2d, volumes, bench = prepare_inputs(state, data)
    shards = out / "shards"
    curated = out / "curated"
    results: dict = {"out": str(out)}

    run_curation(state, images2d, volumes, shards, curated)

    size_ = state.size
    model_dir = out / "pretraining"
    run_step(state, "pretraining: MoCoV2 (ResNet-18, mocov2_small.yaml) on the curated patches", [
        "pretraining/train_mocov2.py", "pretraining/configs/mocov2_small.yaml",
        f"data_path={curated}", f"model_dir={model_dir}", f"epochs={size_.pretrain_epochs}",
        f"moco_k={size_.pretrain_queue}", f"batch_size={size_.pretrain_batch}", f"crop_size={size_.pretrain_crop}",
        "workers=1", f"save_freq={size_.pretrain_epochs}", "resume=auto",
        f"probe_data={bench}", "experiment_name=demo_pretraining",
    ], "pretrain")
    encoder = out / "demo_mocov2" / "encoder.pth"  # the parent folder names the arm in checkpoints and reports
    export = ["pretraining/export_encoder.py", str(model_dir / "current.pth"), str(encoder)]
    verdict = read_verdict(model_dir)
    if verdict is not None and not verdict["learned"]:
        export.append("--force")  # the report says loudly that this arm starts from an encoder that did not learn
    run_step(state, "pretraining: export the encoder", export, "export")
    results["verdict"] = verdict
    probe_out = out / "probe"
    run_step(state, "evaluation: encoder probe (frozen features, linear) vs random", [
        "evaluation/probe_encoder.py", str(encoder), str(bench), f"arch={ENCODER_ARCH}", f"out={probe_out}",
        f"seeds={list(size_.seeds)}"], "probe")
    results["probe"] = json.loads((probe_out / "result.json").read_text())

    ious: dict[str, dict[int, dict[str, float]]] = {}
    for seed in size_.seeds:
        for arm in ARMS:
            pretraining = str(encoder) if arm.pretraining == "pretrained" else arm.pretraining
            ious.setdefault(arm.key, {})[seed] = finetune_and_score(state, bench, arm, seed, pretraining)
    results["iou"] = ious
    run_step(state, "evaluation: IoU table and chart from the MLflow runs", [
        "evaluation/report.py", "--out", str(out / "figures"), "--experiment", "demo_synthetic_mito"], "report")

    report = write_report(out, ious=ious, timings=state.timings, total_seconds=time.perf_counter() - t0, arms=ARMS,
                          bench=bench,
                          verdict=verdict, probe=results["probe"])
    results.update(report)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    counts, paper = report["counts"], report["comparison"]["2d"]["paper"]
    _say(
        f"report: {out / 'report.md'} | patches raw {counts['raw']} / de-duplicated {counts['deduplicated']} / "
        f"kept {counts['kept']} | pretraining {verdict_text(verdict)} | Test_Set_IoU 2D random (end to end) "
        f"{paper['baseline']} vs pretrained (frozen) {paper['arm']}, paired difference {paper['difference']} | "
        f"probe difference {results['probe']['difference_mean']:+.3f}"
    )
    return results


def finetune_and_score(state: DemoState, bench: Path, arm: Arm, seed: int, pretraining: str) -> dict:
    """Fine-tune one arm with one seed, then score it on the 2D and 3D test sets (Test_Set_IoU of each).

    In this process, through the library functions evaluation/finetune.py, inference2d.py and inference3d.py call
    (the same config loading, training and scoring): 9 to 18 fresh interpreters would cost a minute of imports."""
    out, size = state.out, state.size
    tag = f"{arm.key}/seed{seed}"
    ft_dir = out / "finetune" / arm.key / f"seed{seed}"
    predictions = out / "predictions" / arm.key / f"seed{seed}"
    overrides = [
        f"data_dir={bench}", f"model_dir={ft_dir}", "experiment_name=demo_synthetic_mito", f"pretraining={pretraining}",
        f"iters={size.finetune_iters}", f"test_dir2d={bench / 'test2d'}", f"test_dir3d={bench / 'test3d'}",
        f"save_dir2d={predictions / '2d'}", f"save_dir3d={predictions / '3d'}",
        f"encoder={ENCODER_ARCH}", f"finetune_layer={arm.finetune_layer}", f"seed={seed}", "resume=auto",
    ]
    config = "evaluation/configs/example.yaml"
    protocol = "frozen" if arm.finetune_layer == "none" else "trained"
    cmd = ["evaluation/finetune.py", config, *overrides]
    trained = run_in_process(state, f"evaluation: fine-tune U-Net ({tag}, encoder {protocol})", cmd,
                             f"finetune_{arm.key}_seed{seed}",
                             lambda: finetune(load_eval_config(ROOT / config, overrides, stage="train"),
                                              config_path=str(ROOT / config), progress=False))
    if trained.get("interrupted"):  # SIGTERM: the loop saved and stopped; the demo must stop too, not go on
        raise CellEMNetError(f"demo step 'fine-tune {tag}' was interrupted (SIGTERM); its resume state is in "
                             f"{ft_dir}: run the demo again to continue")
    checkpoint = trained["checkpoint"] or newest_checkpoint(ft_dir)
    scores = {}
    for kind, stage, run in (("2d", "infer2d", run_inference2d), ("3d", "infer3d", run_inference3d)):
        cmd = [f"evaluation/inference{kind}.py", config, str(checkpoint), *overrides]
        scores[kind] = run_in_process(
            state, f"evaluation: {kind.upper()} inference ({tag})", cmd, f"inference{kind}_{arm.key}_seed{seed}",
            lambda stage=stage, run=run: run(load_eval_config(ROOT / config, overrides, stage=stage), checkpoint,
                                             progress=False))
    return scores


def run_in_process(state: DemoState, title: str, cmd: list[str], log_name: str, call):
    """Like run_step, for a library call `call()` in this process; its log is headed by the equivalent command."""
    import contextlib
    import io
    import traceback

    def work():
        buffer, result, failure = io.StringIO(), None, None
        with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
            try:
                result = call()
            except Exception as exc:  # noqa: BLE001 - reported with the step's name, its log kept
                failure = exc
                traceback.print_exc()
        return result, buffer.getvalue(), failure

    return _step(state, title, log_name, f"python {shlex.join(cmd)}", work)


def read_verdict(model_dir: Path) -> dict | None:
    """The pretraining run's verdict from <model_dir>/health.json (None when the run wrote none)."""
    path = model_dir / HEALTH_FILE
    return json.loads(path.read_text()).get("verdict") if path.is_file() else None


def verdict_text(verdict: dict | None) -> str:
    if verdict is None:
        return "no verdict"
    return "learned" if verdict["learned"] else f"DID NOT LEARN ({verdict['reason']})"


def newest_checkpoint(folder: Path) -> Path:
    found = sorted(folder.glob("**/*.pth"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise CellEMNetError(f"{folder}: no checkpoint was written")
    return found[-1]


@cli_main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cellemnet.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder (default demo_out)")
    parser.add_argument("--size", choices=sorted(SIZES), default="default", help="'small' is the quick CI size")
    parser.add_argument("--data", type=Path, default=None,
                        help="your own folder: images2d/<project>/* and/or volumes/* (optional benchmark/ with "
                             "train/{images,masks} and test2d/, test3d/ for fine-tuning)")
    parser.add_argument("--publish-figures", type=Path, default=None, metavar="DIR",
                        help="also copy the report's figures to DIR as demo_*.png (the README's come from images/)")
    args = parser.parse_args(argv)
    results = main_demo(args.out, args.size, args.data)
    if args.publish_figures is not None:
        publish_figures(results, args.publish_figures)
    return 0


def publish_figures(results: dict, folder: Path) -> list[Path]:
    """Copy the report's figures to folder/demo_<name>.png, atomically."""
    written = []
    for source in results.get("figures", {}).values():
        source = Path(source)
        target = folder / f"demo_{source.name}"
        atomic_write_bytes(target, source.read_bytes())
        written.append(target)
    _say(f"figures copied to {folder}: {', '.join(p.name for p in written)}")
    return written


if __name__ == "__main__":
    sys.exit(main())
