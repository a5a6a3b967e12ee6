"""Pretraining (MoCoV2, SwAV) as a task of the training engine (cellemnet/engine.py): one process on CPU/GPU, or
many under torchrun.

What differs between the methods lives in a method object (cellemnet/pretraining/methods/, one file each,
registered by name: model, optimizer, lr, one training step, extra state); the loop, distributed set-up, AMP,
checkpoint writes, resume, MLflow and progress are the engine's; what is pretraining's own - epochs over a
source-balanced sampler, the health monitor and its verdict, `current.pth` and kept epoch checkpoints - is here.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from cellemnet import engine, runtime
from cellemnet.config import describe, save_config
from cellemnet.encoder import Norms
from cellemnet.engine import METRICS_LOG
from cellemnet.errors import ConfigError, InputError
from cellemnet.evaluation.probe import ProbeSettings, load_probe_data, probe_trunk
from cellemnet.io import atomic_write_bytes, check_writable
from cellemnet.pretraining import checkpoint as ckpt_io
from cellemnet.pretraining import guardrails, health
from cellemnet.pretraining.config import SCHEMAS, load_pretraining_config
from cellemnet.pretraining.data import SourceBalancedSampler, build_dataset
from cellemnet.pretraining.methods import METHODS
from cellemnet.pretraining.optim import set_lr
from cellemnet.tracking import start_run

__all__ = ["METRICS_LOG", "Run", "train", "main_for"]


class Run:
    """Everything one pretraining process holds: what a method's step reads, what a checkpoint saves."""

    def __init__(self, cfg: dict[str, Any], method_name: str, ctx: engine.Context):
        self.cfg = cfg
        self.method = METHODS[method_name](cfg)
        self.ctx = ctx
        self.info, self.device = ctx.info, ctx.device
        self.amp, self.channels_last = ctx.amp, ctx.channels_last
        world = self.info.world_size
        if cfg["batch_size"] % world:
            raise ConfigError(f"key 'batch_size': the global batch {cfg['batch_size']} is not divisible by the "
                              f"{world} processes")
        self.batch_per_rank = cfg["batch_size"] // world
        self.global_step = 0  # steps completed
        self.total_steps = 0
        self.iters_per_epoch = 0
        self.monitor: health.HealthMonitor | None = None
        self.model: nn.Module = None  # DDP-wrapped under torchrun
        self.unwrapped: nn.Module = None
        self.optimizer: torch.optim.Optimizer = None
        self.scaler: torch.amp.GradScaler = None
        self.sampler: SourceBalancedSampler = None
        self.run_id: str | None = None

    def say(self, text: str) -> None:
        self.ctx.say(text)

    def position(self, step: int) -> tuple[int, int]:
        """(epochs completed, iterations done in the next epoch) after `step` steps."""
        return divmod(step, self.iters_per_epoch)


def _checkpoint_state(run: Run, step: int) -> dict:
    epoch, iteration = run.position(step)
    scaler_state = run.scaler.state_dict() if run.scaler.is_enabled() else {}
    return {
        "method": run.method.name,
        "arch": run.cfg["arch"],
        "epoch": epoch,  # epochs completed
        "iteration": iteration,  # iterations done inside `epoch` (0 at an epoch boundary)
        "global_step": step,
        "state_dict": run.unwrapped.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scaler": scaler_state,
        "sampler": {"seed": run.sampler.seed, "epoch": epoch, "start_index": iteration * run.batch_per_rank},
        "world_size": run.info.world_size,
        "config": dict(run.cfg),
        "norms": Norms.parse(run.cfg["norms"]).pair(),
        "run_id": run.run_id,
        "health": run.monitor.state() if run.monitor is not None else None,
        **run.method.extra_state(run),
    }


def _save(run: Run, step: int, keep: bool = False) -> Path | None:
    """current.pth (and, with keep, checkpoint_NNNN.pth) after `step` steps; every rank takes part (SwAV's queue is
    gathered), rank 0 writes."""
    state = _checkpoint_state(run, step)
    path = None
    if run.info.is_main:
        path = ckpt_io.save_checkpoint(state, run.cfg["model_dir"], keep_epoch=run.position(step)[0] if keep else None)
    if run.info.distributed:
        torch.distributed.barrier()
    return path


class PretrainingTask:
    """The engine's task for one pretraining run: epochs over the sampler, the method's step, logging every
    `print_freq` steps, epoch means, health and checkpoints at each epoch end."""

    def __init__(self, run: Run, loader: DataLoader, log: engine.MetricsLog, last_path: Path | None):
        self.run, self.cfg, self.loader, self.log = run, run.cfg, loader, log
        self.chance = health.loss_chance_level(run.method.name, run.cfg)
        self.last_path = last_path
        self.lr = 0.0
        self.epoch_means: dict[str, float] = {}
        self._reset_sums()
        self.window: dict[str, list[float]] = {}

    def _reset_sums(self) -> None:
        self.sums: dict[str, list[float]] = {}  # key -> [sum, count]; MoCo's top-k only exists once the queue is full

    def batches(self, start_step: int):
        run, cfg = self.run, self.cfg
        epoch, first = run.position(start_step)
        for epoch in range(epoch, cfg["epochs"]):
            run.sampler.set_epoch(epoch, start_index=first * run.batch_per_rank)
            runtime.seed_everything(runtime.seed_from_words(cfg["seed"], epoch, run.info.rank))
            run.method.start_epoch(epoch, run.unwrapped, run)
            run.unwrapped.train()
            self._reset_sums()
            yield from itertools.islice(self.loader, run.iters_per_epoch - first)
            first = 0

    def train_step(self, batch, step: int) -> dict[str, float]:
        run = self.run
        run.global_step = step - 1
        self.lr = run.method.lr((step - 1) // run.iters_per_epoch, run.global_step, run.iters_per_epoch)
        set_lr(run.optimizer, self.lr)
        metrics = run.method.step(batch, run)
        run.global_step = step
        return {**metrics, "lr": self.lr}

    def after_step(self, step: int, metrics: dict[str, float]) -> bool:
        if not math.isfinite(metrics["loss"]):
            self.run.monitor.nonfinite_step = step
        for k, v in metrics.items():
            if k == "lr":
                continue
            for acc in (self.sums, self.window):
                acc.setdefault(k, [0.0, 0])
                acc[k][0] += v
                acc[k][1] += 1
        epoch, it = (step - 1) // self.run.iters_per_epoch, (step - 1) % self.run.iters_per_epoch + 1
        if step % self.cfg["print_freq"] == 0 or it == self.run.iters_per_epoch:
            record = {k: s / n for k, (s, n) in self.window.items()}
            self.log.log({**record, "lr": self.lr}, step, epoch=epoch, iteration=it)
            self.window = {}
        return False

    def after_epoch(self, epochs_done: int, step: int) -> bool:
        """Epoch means averaged over processes (each rank saw a different part of the epoch), health, checkpoint."""
        run, cfg = self.run, self.cfg
        keys = sorted(self.sums)
        means = torch.tensor([self.sums[k][0] / max(self.sums[k][1], 1) for k in keys], device=run.device,
                             dtype=torch.float64)
        if run.info.distributed:
            torch.distributed.all_reduce(means)
            means /= run.info.world_size
        self.epoch_means = {f"epoch_{k}": float(v) for k, v in zip(keys, means.tolist())}
        self.log.tracker.log_metrics({**self.epoch_means, "epoch": epochs_done, "loss_chance": self.chance},
                                     step=step)
        last = epochs_done == cfg["epochs"]
        run.monitor.epoch_end(run.unwrapped, epochs_done, step, last=last)
        self.last_path = _save(run, step, keep=epochs_done % cfg["save_freq"] == 0 or last)
        run.say(f"epoch {epochs_done}: " + ", ".join(f"{k} {v:.4f}" for k, v in self.epoch_means.items())
                + f" (chance level of the loss {self.chance:.3f})")
        return True

    def save_resume_state(self, step: int) -> Path | None:
        self.last_path = _save(self.run, step)
        return self.last_path

    def on_nonfinite(self, step: int, metrics: dict[str, float]) -> None:
        run = self.run
        run.say(f"the loss became non-finite at step {step}: training stopped")
        run.monitor.finish(run.unwrapped, (step - 1) // run.iters_per_epoch, step)
        self.last_path = _save(run, step)


def _resume_state(run: Run) -> tuple[Path | None, dict | None]:
    cfg = run.cfg
    resume_path = ckpt_io.resolve_resume(cfg["resume"], cfg["model_dir"])
    state = ckpt_io.load_checkpoint(resume_path) if resume_path else None
    if state is not None and state.get("method") not in (None, run.method.name):
        raise InputError(f"{resume_path}: a {state.get('method')} checkpoint cannot resume {run.method.name}")
    return resume_path, state


def _data(run: Run):
    """The dataset (rank 0 builds or re-uses the index, the others read it afterwards), the sampler, the number of
    steps; settings that cannot work on this many patches stop here, before any model is built."""
    cfg, info = run.cfg, run.info
    transform = run.method.transform()
    if info.is_main:
        dataset, weights, sources = build_dataset(cfg, transform)
    if info.distributed:
        torch.distributed.barrier()
    if not info.is_main:
        dataset, weights, sources = build_dataset({**cfg, "rebuild_index": False}, transform)
    run.sampler = SourceBalancedSampler(len(dataset), weights, info.rank, info.world_size, cfg["seed"])
    iters = run.sampler.num_samples // run.batch_per_rank
    if cfg["iters_per_epoch"]:
        iters = min(iters, cfg["iters_per_epoch"])
    if iters < 1:
        raise InputError(f"{cfg['data_path']}: {len(dataset)} patches are fewer than one global batch "
                         f"({cfg['batch_size']})")
    run.iters_per_epoch = iters
    run.total_steps = cfg["epochs"] * iters
    for warning in guardrails.check_data_settings({**cfg, "_planned_steps": run.total_steps}, run.method.name,
                                                  len(dataset)):
        if info.is_main:
            print(f"WARNING: {warning}", file=sys.stderr, flush=True)
    return dataset, sources


def _build_model(run: Run, state: dict | None, resume_path: Path | None) -> None:
    """Model (identical init on every rank; DDP also broadcasts rank 0's weights), optimizer, scaler; the resumed
    state loaded into them."""
    cfg = run.cfg
    runtime.seed_everything(cfg["seed"])
    model = engine.place_model(run.method.build_model(), run.ctx, sync_bn=cfg.get("sync_bn", False))
    run.unwrapped = model
    run.optimizer = run.method.build_optimizer(model)
    run.scaler = runtime.make_grad_scaler(run.device, run.amp)
    if state is not None:
        model.load_state_dict(state["state_dict"])
        run.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler") and run.scaler.is_enabled():
            run.scaler.load_state_dict(state["scaler"])
        run.global_step = int(state["global_step"])
        run.run_id = state.get("run_id")
        run.method.load_extra_state(state, run)
        epoch, iteration = int(state["epoch"]), int(state["iteration"])
        run.say(f"resumed from {resume_path}: epoch {epoch}, iteration {iteration}")
    run.model = engine.wrap_ddp(model, run.ctx, sync_buffers=False)


def _loader(run: Run, dataset) -> DataLoader:
    cfg = run.cfg
    kwargs = dict(batch_size=run.batch_per_rank, sampler=run.sampler, num_workers=cfg["workers"],
                  pin_memory=run.device.type == "cuda", drop_last=True)
    if cfg["workers"] > 0:
        kwargs.update(persistent_workers=False, prefetch_factor=2, worker_init_fn=runtime.ignore_sigterm)
    return DataLoader(dataset, **kwargs)


def train(cfg: dict[str, Any], method_name: str) -> dict[str, Any]:
    """Run (or resume) one pretraining; returns a summary. cfg is a validated config of `method_name`."""
    ctx = engine.start(cfg["device"], cfg["amp"], cfg["channels_last"])
    try:
        return _train(Run(cfg, method_name, ctx))
    finally:
        runtime.cleanup_distributed()


def _train(run: Run) -> dict[str, Any]:
    cfg, info, method_name = run.cfg, run.info, run.method.name
    model_dir = Path(cfg["model_dir"])
    if info.is_main:
        check_writable(model_dir, "pretraining checkpoints")
    resume_path, state = _resume_state(run)
    dataset, sources = _data(run)
    health_set = None
    if info.is_main:
        health_set = health.make_health_set(dataset, run.method.health_transform(), cfg["health_patches"],
                                            cfg["seed"])
    _build_model(run, state, resume_path)
    loader = _loader(run, dataset)
    tracker = start_run(cfg["experiment_name"], run_name=f"{method_name}-{cfg['arch']}", params=cfg,
                        enabled=cfg["logging"], rank=info.rank, run_id=run.run_id, tracking_dir=cfg["tracking_dir"],
                        tags={"method": method_name, "world_size": info.world_size})
    run.run_id = tracker.run_id or run.run_id
    if info.is_main and state is None:
        save_config(cfg, model_dir / "config.yaml")
        tracker.log_artifact(model_dir / "config.yaml")
    run.say(f"{method_name}: {len(dataset)} patches from {len(sources)} sources, {info.world_size} process(es) on "
            f"{run.device.type}, global batch {cfg['batch_size']}, {run.iters_per_epoch} iterations/epoch")
    log = engine.MetricsLog(tracker, model_dir / METRICS_LOG, info.is_main)

    def log_health(metrics: dict[str, float], step: int, record: dict[str, Any]) -> None:
        tracker.log_metrics(metrics, step=step)
        log.write(record)

    run.monitor = health.HealthMonitor(cfg, method_name, health_set, run.device, log_health, run.say,
                                       probe=_online_probe(cfg, run.device) if info.is_main else None)
    run.monitor.load(state.get("health") if state is not None else None)
    run.monitor.start(run.unwrapped)
    task = PretrainingTask(run, loader, log, last_path=resume_path)
    try:
        loop = engine.run_loop(task, run.ctx, start_step=run.global_step, total_steps=run.total_steps,
                               seed=cfg["seed"], checkpoint_iters=cfg["checkpoint_iters"],
                               steps_per_epoch=run.iters_per_epoch, desc=f"{method_name} {cfg['arch']}")
        verdict = None
        if loop.interrupted:
            epoch, it = run.position(loop.last_step)
            run.say(f"stopped by SIGTERM at epoch {epoch}, iteration {it}; continue with resume=auto")
        else:
            epochs = (loop.last_step - 1) // run.iters_per_epoch if loop.nonfinite else cfg["epochs"]
            verdict = run.monitor.finish(run.unwrapped, epochs, run.global_step)
            _write_health(run, model_dir)
            if verdict is not None:
                tracker.set_tags({"verdict": "learned" if verdict["learned"] else "did not learn",
                                  "verdict_reason": verdict["reason"]})
        tracker.end("KILLED" if loop.interrupted else "FINISHED")
    except BaseException:
        tracker.end("FAILED")
        raise
    return {"interrupted": loop.interrupted, "global_step": run.global_step, "checkpoint": str(task.last_path or ""),
            "run_id": run.run_id, "verdict": verdict, **task.epoch_means}


def _write_health(run: Run, model_dir: Path) -> None:
    """<model_dir>/health.json: every health record and the verdict (what export_encoder.py checks)."""
    if not run.info.is_main or run.monitor is None or not run.monitor.active:
        return
    atomic_write_bytes(model_dir / health.HEALTH_FILE, json.dumps(run.monitor.state(), indent=2).encode())


def _online_probe(cfg: dict[str, Any], device: torch.device):
    """A function trunk -> probe IoU on cfg['probe_data'] (cellemnet.evaluation.probe, two seeds; the labeled
    images are read once), or None when no labeled data is configured."""
    if not cfg.get("probe_data"):
        return None
    # local: the evaluation stage (segmentation_models_pytorch) loads only when a probe is configured

    data = load_probe_data(cfg["probe_data"])
    settings = ProbeSettings(seeds=(0, 1))
    return lambda trunk: probe_trunk(trunk, cfg["arch"], data, cfg["norms"], settings=settings).encoder_mean


def main_for(method_name: str, argv: list[str] | None = None) -> int:
    """Body of pretraining/train_<method>.py: CONFIG [key=value ...] -> train; exit 143 when stopped by SIGTERM."""
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
