"""The pretraining loop shared by MoCoV2 and SwAV: one process on CPU/GPU, or many under torchrun.

What differs between the methods lives in a method object (cellemnet/pretraining/methods/, one file each,
registered by name: model, optimizer, lr, one training step, extra state); everything else - distributed set-up,
data, AMP, checkpoints, resume, MLflow, progress - is here.
"""
from __future__ import annotations

import inspect
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cellemnet import runtime
from cellemnet.config import save_config
from cellemnet.encoder import Norms
from cellemnet.errors import ConfigError, InputError
from cellemnet.pretraining import checkpoint as ckpt_io
from cellemnet.pretraining import guardrails, health
from cellemnet.pretraining.data import SourceBalancedSampler, build_dataset
from cellemnet.pretraining.methods import METHODS
from cellemnet.pretraining.optim import set_lr

METRICS_LOG = "metrics.jsonl"




class Run:
    """Everything one training process holds (what a step needs, what a checkpoint saves)."""

    def __init__(self, cfg: dict[str, Any], method_name: str):
        self.cfg = cfg
        self.method = METHODS[method_name](cfg)
        self.info, self.device = runtime.init_distributed(cfg["device"])
        world = self.info.world_size
        if cfg["batch_size"] % world:
            raise ConfigError(f"key 'batch_size': the global batch {cfg['batch_size']} is not divisible by the "
                              f"{world} processes")
        self.batch_per_rank = cfg["batch_size"] // world
        cuda = self.device.type == "cuda"
        self.amp = cfg["amp"] and cuda
        self.channels_last = cfg["channels_last"] and cuda
        self.global_step = 0
        self.total_steps = 0
        self.stop = runtime.SigtermFlag()  # SIGTERM, or a non-finite loss, asks every process to stop
        self.nonfinite = False
        self.monitor: health.HealthMonitor | None = None

    def say(self, text: str) -> None:
        if self.info.is_main:
            print(text, flush=True)


def _checkpoint_state(run: Run, epoch: int, iteration: int, sampler: SourceBalancedSampler, run_id) -> dict:
    scaler_state = run.scaler.state_dict() if run.scaler.is_enabled() else {}
    return {
        "method": run.method.name,
        "arch": run.cfg["arch"],
        "epoch": epoch,  # epochs completed
        "iteration": iteration,  # iterations done inside `epoch` (0 at an epoch boundary)
        "global_step": run.global_step,
        "state_dict": run.unwrapped.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scaler": scaler_state,
        "sampler": {"seed": sampler.seed, "epoch": epoch, "start_index": iteration * run.batch_per_rank},
        "world_size": run.info.world_size,
        "config": dict(run.cfg),
        "norms": Norms.parse(run.cfg["norms"]).pair(),
        "run_id": run_id,
        "health": run.monitor.state() if run.monitor is not None else None,
        **run.method.extra_state(run),
    }


def _save(run: Run, epoch: int, iteration: int, sampler, run_id, keep: bool) -> Path | None:
    state = _checkpoint_state(run, epoch, iteration, sampler, run_id)  # collective for SwAV's queue
    path = None
    if run.info.is_main:
        path = ckpt_io.save_checkpoint(state, run.cfg["model_dir"], keep_epoch=epoch if keep else None)
    if run.info.distributed:
        torch.distributed.barrier()
    return path


def _log_line(model_dir: Path, record: dict[str, Any]) -> None:
    with open(model_dir / METRICS_LOG, "a") as fh:
        fh.write(json.dumps(record) + "\n")


def train(cfg: dict[str, Any], method_name: str) -> dict[str, Any]:
    """Run (or resume) one pretraining; returns a summary. cfg is a validated config of `method_name`."""
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from cellemnet.tracking import start_run

    run = Run(cfg, method_name)
    info, device = run.info, run.device
    model_dir = Path(cfg["model_dir"])
    if info.is_main:
        from cellemnet.io import check_writable

        check_writable(model_dir, "pretraining checkpoints")
    resume_path = ckpt_io.resolve_resume(cfg["resume"], model_dir)
    state = ckpt_io.load_checkpoint(resume_path) if resume_path else None
    if state is not None and state.get("method") not in (None, method_name):
        raise InputError(f"{resume_path}: a {state.get('method')} checkpoint cannot resume {method_name}")

    # Data: rank 0 builds (or re-uses) the index, the others read it afterwards.
    transform = run.method.transform()
    if info.is_main:
        dataset, weights, sources = build_dataset(cfg, transform)
    if info.distributed:
        torch.distributed.barrier()
    if not info.is_main:
        dataset, weights, sources = build_dataset({**cfg, "rebuild_index": False}, transform)
    sampler = SourceBalancedSampler(len(dataset), weights, info.rank, info.world_size, cfg["seed"])
    iters_per_epoch = sampler.num_samples // run.batch_per_rank
    if cfg["iters_per_epoch"]:
        iters_per_epoch = min(iters_per_epoch, cfg["iters_per_epoch"])
    if iters_per_epoch < 1:
        raise InputError(f"{cfg['data_path']}: {len(dataset)} patches are fewer than one global batch "
                         f"({cfg['batch_size']})")
    run.total_steps = cfg["epochs"] * iters_per_epoch
    # Settings that cannot work on this many patches stop here, before any model is built.
    for warning in guardrails.check_data_settings({**cfg, "_planned_steps": run.total_steps}, method_name,
                                                  len(dataset)):
        if info.is_main:
            print(f"WARNING: {warning}", file=sys.stderr, flush=True)
    health_set = None
    if info.is_main:
        health_set = health.make_health_set(dataset, run.method.health_transform(), cfg["health_patches"],
                                            cfg["seed"])

    # Model: identical init on every rank (DDP also broadcasts rank 0's weights).
    runtime.seed_everything(cfg["seed"])
    model = run.method.build_model()
    if device.type == "cuda" and info.distributed and cfg.get("sync_bn", False):
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    if run.channels_last:
        model.to(memory_format=torch.channels_last)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    run.unwrapped = model
    run.optimizer = run.method.build_optimizer(model)
    run.scaler = runtime.make_grad_scaler(device, run.amp)
    start_epoch, start_iter, run_id = 0, 0, None
    if state is not None:
        model.load_state_dict(state["state_dict"])
        run.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler") and run.scaler.is_enabled():
            run.scaler.load_state_dict(state["scaler"])
        start_epoch, start_iter = int(state["epoch"]), int(state["iteration"])
        run.global_step = int(state["global_step"])
        run_id = state.get("run_id")
        run.method.load_extra_state(state, run)
        run.say(f"resumed from {resume_path}: epoch {start_epoch}, iteration {start_iter}")
    if info.distributed:
        ids = [device.index] if device.type == "cuda" else None
        # Buffers are not re-broadcast at every forward: the MoCo queue is filled identically on every rank
        # (all-gathered keys), and a 32 MB broadcast per step would cost more than it guards.
        ddp_params = inspect.signature(nn.parallel.DistributedDataParallel).parameters
        no_sync = {"forward_sync_buffers": False} if "forward_sync_buffers" in ddp_params else {
            "broadcast_buffers": False}
        run.model = nn.parallel.DistributedDataParallel(model, device_ids=ids, **no_sync)
    else:
        run.model = model

    loader_kwargs = dict(batch_size=run.batch_per_rank, sampler=sampler, num_workers=cfg["workers"],
                         pin_memory=device.type == "cuda", drop_last=True)
    if cfg["workers"] > 0:
        loader_kwargs["persistent_workers"] = False
        loader_kwargs["prefetch_factor"] = 2
        loader_kwargs["worker_init_fn"] = runtime.ignore_sigterm
    loader = DataLoader(dataset, **loader_kwargs)

    tracker = start_run(cfg["experiment_name"], run_name=f"{method_name}-{cfg['arch']}", params=cfg,
                        enabled=cfg["logging"], rank=info.rank, run_id=run_id, tracking_dir=cfg["tracking_dir"],
                        tags={"method": method_name, "world_size": info.world_size})
    run_id = tracker.run_id or run_id
    if info.is_main and state is None:
        save_config(cfg, model_dir / "config.yaml")
        tracker.log_artifact(model_dir / "config.yaml")
    run.say(f"{method_name}: {len(dataset)} patches from {len(sources)} sources, {info.world_size} process(es) on "
            f"{device.type}, global batch {cfg['batch_size']}, {iters_per_epoch} iterations/epoch")

    def log_health(metrics: dict[str, float], step: int, record: dict[str, Any]) -> None:
        tracker.log_metrics(metrics, step=step)
        _log_line(model_dir, record)

    run.monitor = health.HealthMonitor(cfg, method_name, health_set, device, log_health, run.say,
                                       probe=_online_probe(cfg, device) if info.is_main else None)
    run.monitor.load(state.get("health") if state is not None else None)
    run.monitor.start(model)
    chance = health.loss_chance_level(method_name, cfg)

    run.stop.__enter__()
    interrupted = False
    last_path = resume_path
    epoch_means: dict[str, float] = {}
    epoch = start_epoch
    try:
        for epoch in range(start_epoch, cfg["epochs"]):
            first_iter = start_iter if epoch == start_epoch else 0
            sampler.set_epoch(epoch, start_index=first_iter * run.batch_per_rank)
            runtime.seed_everything(runtime.seed_from_words(cfg["seed"], epoch, info.rank))
            run.method.start_epoch(epoch, model, run)
            model.train()
            sums: dict[str, float] = {}
            counts: dict[str, int] = {}  # per key: MoCo's top-k only exists once the queue is full
            window: dict[str, float] = {}
            window_counts: dict[str, int] = {}
            bar = tqdm(total=iters_per_epoch, initial=first_iter, desc=f"epoch {epoch + 1}/{cfg['epochs']}",
                       disable=not info.is_main, dynamic_ncols=True)
            it = first_iter
            for batch in loader:
                if it >= iters_per_epoch:
                    break
                # The step's own randomness (MoCo's batch shuffle) is keyed by the step: a resumed run repeats it.
                torch.manual_seed(runtime.seed_from_words(cfg["seed"], info.rank, run.global_step))
                lr = run.method.lr(epoch, run.global_step, iters_per_epoch)
                set_lr(run.optimizer, lr)
                metrics = run.method.step(batch, run)
                run.global_step += 1
                it += 1
                if not math.isfinite(metrics["loss"]):
                    run.nonfinite = run.stop.requested = True
                    run.monitor.nonfinite_step = run.global_step
                for k, v in metrics.items():
                    for acc, n in ((sums, counts), (window, window_counts)):
                        acc[k] = acc.get(k, 0.0) + v
                        n[k] = n.get(k, 0) + 1
                bar.update(1)
                bar.set_postfix(loss=f"{metrics['loss']:.4f}", lr=f"{lr:.3g}")
                if run.global_step % cfg["print_freq"] == 0 or it == iters_per_epoch:
                    record = {k: v / window_counts[k] for k, v in window.items()}
                    record["lr"] = lr
                    tracker.log_metrics(record, step=run.global_step)
                    if info.is_main:
                        _log_line(model_dir, {"epoch": epoch, "iteration": it, "step": run.global_step, **record})
                    window, window_counts = {}, {}
                stop = run.stop.agreed(device, info.distributed)
                if it < iters_per_epoch and not stop and cfg["checkpoint_iters"] and \
                        run.global_step % cfg["checkpoint_iters"] == 0:
                    last_path = _save(run, epoch, it, sampler, run_id, keep=False)
                if stop:
                    interrupted = True
                    break
            bar.close()
            if interrupted:
                if run.nonfinite:
                    run.say(f"the loss became non-finite at step {run.global_step}: training stopped")
                    run.monitor.finish(model, epoch, run.global_step)
                    last_path = _save(run, epoch, it, sampler, run_id, keep=False)
                    break
                # stopped exactly at the epoch end: save the finished epoch
                last_path = _save(run, epoch + 1, 0, sampler, run_id, keep=False) if it >= iters_per_epoch else \
                    _save(run, epoch, it, sampler, run_id, keep=False)
                run.say(f"stopped by SIGTERM at epoch {epoch}, iteration {it}; continue with resume=auto")
                break
            # Epoch means averaged over processes (each rank saw a different part of the epoch).
            keys = sorted(sums)
            means = torch.tensor([sums[k] / max(counts[k], 1) for k in keys], device=device, dtype=torch.float64)
            if info.distributed:
                torch.distributed.all_reduce(means)
                means /= info.world_size
            epoch_means = {f"epoch_{k}": float(v) for k, v in zip(keys, means.tolist())}
            tracker.log_metrics({**epoch_means, "epoch": epoch + 1, "loss_chance": chance}, step=run.global_step)
            last = epoch + 1 == cfg["epochs"]
            run.monitor.epoch_end(model, epoch + 1, run.global_step, last=last)
            keep = (epoch + 1) % cfg["save_freq"] == 0 or last
            last_path = _save(run, epoch + 1, 0, sampler, run_id, keep=keep)
            run.say(f"epoch {epoch + 1}: " + ", ".join(f"{k} {v:.4f}" for k, v in epoch_means.items())
                    + f" (chance level of the loss {chance:.3f})")
        result = None
        if not interrupted or run.nonfinite:
            result = run.monitor.finish(model, epoch + (0 if run.nonfinite else 1), run.global_step)
            _write_health(run, model_dir)
            if result is not None:
                tracker.set_tags({"verdict": "learned" if result["learned"] else "did not learn",
                                  "verdict_reason": result["reason"]})
        tracker.end("KILLED" if interrupted and not run.nonfinite else "FINISHED")
    except BaseException:
        tracker.end("FAILED")
        raise
    finally:
        run.stop.__exit__(None, None, None)
        runtime.cleanup_distributed()
    return {"interrupted": interrupted and not run.nonfinite, "global_step": run.global_step,
            "checkpoint": str(last_path or ""), "run_id": run_id, "verdict": result, **epoch_means}


def _write_health(run: Run, model_dir: Path) -> None:
    """<model_dir>/health.json: every health record and the verdict (what export_encoder.py checks)."""
    if not run.info.is_main or run.monitor is None or not run.monitor.active:
        return
    from cellemnet.io import atomic_write_bytes

    atomic_write_bytes(model_dir / health.HEALTH_FILE, json.dumps(run.monitor.state(), indent=2).encode())


def _online_probe(cfg: dict[str, Any], device: torch.device):
    """A function trunk -> probe IoU on cfg['probe_data'] (cellemnet.evaluation.probe, two seeds; the labeled
    images are read once), or None when no labeled data is configured."""
    if not cfg.get("probe_data"):
        return None
    from cellemnet.evaluation.probe import ProbeSettings, load_probe_data, probe_trunk

    data = load_probe_data(cfg["probe_data"])
    settings = ProbeSettings(seeds=(0, 1))
    return lambda trunk: probe_trunk(trunk, cfg["arch"], data, cfg["norms"], settings=settings).encoder_mean


def main_for(method_name: str, argv: list[str] | None = None) -> int:
    """Body of pretraining/train_<method>.py: CONFIG [key=value ...] -> train; exit 143 when stopped by SIGTERM."""
    import argparse

    from cellemnet.config import describe
    from cellemnet.pretraining.config import SCHEMAS, load_pretraining_config

    parser = argparse.ArgumentParser(
        description=f"{method_name} pretraining (any config key can be overridden as key=value)",
        epilog="config keys:\n" + describe(SCHEMAS[method_name]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", help="YAML config file")
    parser.add_argument("overrides", nargs="*", help="key=value overrides")
    args = parser.parse_args(argv)
    cfg = load_pretraining_config(args.config, method_name, args.overrides)
    started = time.time()
    summary = train(cfg, method_name)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"done in {time.time() - started:.0f} s: {summary['global_step']} steps; "
              f"checkpoint {summary['checkpoint']}")
    return 143 if summary["interrupted"] else 0
