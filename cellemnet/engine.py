"""The training engine both stages use: pretraining (MoCoV2, SwAV) and U-Net fine-tuning.

What every training run needs lives here once: where the process runs (torchrun ranks, device, AMP, channels_last),
the model on the device and under DDP, `resume=auto|PATH`, atomic checkpoint writes, MLflow + `metrics.jsonl`, the
progress bar, a graceful stop on SIGTERM, and the step loop itself. What a stage trains is a `Task`: an object with
`batches(start_step)`, `train_step(batch, step)`, `save_resume_state(step)` and optional hooks (`after_step`,
`after_epoch`, `on_nonfinite`). The loop calls them in this order for every step:

    batch = next(batches); metrics = train_step(batch, step); after_step(step, metrics);
    after_epoch(epoch, step) at each epoch's last step; then, if SIGTERM was received or `checkpoint_iters` steps
    passed (and no hook saved a resumable state at this step), save_resume_state(step); on SIGTERM the loop stops.

A non-finite loss stops every process at the same step; the task's `on_nonfinite` decides what that means
(pretraining records it in its verdict; fine-tuning raises). Each step's own randomness (MoCo's batch shuffle) is
drawn from a stream keyed by (seed, rank, step), so a resumed run repeats an uninterrupted one exactly.
"""
from __future__ import annotations

import inspect
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Protocol, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from cellemnet import runtime
from cellemnet.errors import ConfigError
from cellemnet.io import torch_bytes, write_or_rescue

METRICS_LOG = "metrics.jsonl"


@dataclass
class Context:
    """One training process: its place in the launch, its device and precision."""

    info: runtime.DistInfo
    device: torch.device
    amp: bool = False  # autocast (bf16/fp16) on the GPU
    channels_last: bool = False  # NHWC memory layout on the GPU

    def say(self, text: str) -> None:
        """Print on the main process only, above a progress bar when one is shown."""
        if self.info.is_main:
            tqdm.write(text, file=sys.stdout)
            sys.stdout.flush()


def start(device_preference: str, amp: bool, channels_last: bool) -> Context:
    """Join the torchrun launch (if any) and pick the device; AMP and channels_last only apply on the GPU."""
    info, device = runtime.init_distributed(device_preference)
    cuda = device.type == "cuda"
    return Context(info, device, amp=bool(amp) and cuda, channels_last=bool(channels_last) and cuda)


def place_model(model: nn.Module, ctx: Context, sync_bn: bool = False) -> nn.Module:
    """The model on the context's device (channels_last when asked), SyncBatchNorm across GPUs when asked."""
    if sync_bn and ctx.device.type == "cuda" and ctx.info.distributed:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(ctx.device)
    if ctx.channels_last:
        model.to(memory_format=torch.channels_last)
    if ctx.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return model


def wrap_ddp(model: nn.Module, ctx: Context, sync_buffers: bool = True) -> nn.Module:
    """DistributedDataParallel under torchrun, the model itself otherwise.

    sync_buffers=False: buffers are not re-broadcast at every forward (the MoCo queue is filled identically on every
    rank from all-gathered keys; a 32 MB broadcast per step would cost more than it guards)."""
    if not ctx.info.distributed:
        return model
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    kwargs: dict[str, Any] = {}
    if not sync_buffers:
        params = inspect.signature(nn.parallel.DistributedDataParallel).parameters
        kwargs = {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, **kwargs)


def resolve_resume(value: str, latest: Callable[[], Path | None]) -> Path | None:
    """The `resume` key: '' -> None (a fresh start); 'auto' -> latest() (None: a fresh start); else that file."""
    if not value:
        return None
    if value == "auto":
        return latest()
    path = Path(value).expanduser()
    if not path.is_file():
        raise ConfigError(f"key 'resume': checkpoint not found: {path}")
    return path


def save_state(state: Mapping[str, Any], paths: Path | Sequence[Path]) -> Path:
    """Write a checkpoint (tensors and plain types only: torch.load(weights_only=True) reads it) atomically to each
    path. When a folder refuses the write (full disk, lost permission) the state goes to a rescue file in the temp
    folder and a warning names it. Returns the first path written (or its rescue copy)."""
    data = torch_bytes(dict(state))
    targets = [paths] if isinstance(paths, (str, Path)) else list(paths)
    written = [write_or_rescue(Path(p), data, "checkpoint") for p in targets]
    return written[0]


class MetricsLog:
    """Metrics to MLflow (the tracker) and, on the main process, one JSON line each to a `metrics.jsonl` file."""

    def __init__(self, tracker, jsonl: Path | None, is_main: bool):
        self.tracker, self.jsonl, self.is_main = tracker, jsonl, is_main

    def log(self, metrics: Mapping[str, float], step: int, **context: Any) -> None:
        self.tracker.log_metrics(metrics, step=step)
        self.write({**context, "step": step, **metrics})

    def write(self, record: Mapping[str, Any]) -> None:
        """One record to metrics.jsonl only (MLflow gets its metrics through log)."""
        if self.is_main and self.jsonl is not None:
            with open(self.jsonl, "a") as fh:
                fh.write(json.dumps(dict(record)) + "\n")


class Task(Protocol):
    """What a stage trains (see the module docstring for the order of calls)."""

    def batches(self, start_step: int) -> Iterator[Any]:
        """The batches that follow `start_step` completed steps (a resumed run sees what an uninterrupted one saw)."""

    def train_step(self, batch: Any, step: int) -> dict[str, float]:
        """One optimisation step (step counts from 1); returns its metrics, at least 'loss'."""

    def save_resume_state(self, step: int) -> Path | None:
        """Write the state that resume=auto continues from after `step` completed steps."""


@dataclass
class LoopResult:
    last_step: int  # steps completed
    interrupted: bool  # stopped by SIGTERM before the last step
    nonfinite: bool  # stopped by a non-finite loss
    step_seconds: list[float] = field(default_factory=list)  # wall time of each step, saves included
    last_saved: Path | None = None  # the newest resumable state written by the loop


def run_loop(task: Task, ctx: Context, *, start_step: int, total_steps: int, seed: int, checkpoint_iters: int = 0,
             steps_per_epoch: int | None = None, desc: str = "train", progress: bool = True) -> LoopResult:
    """Train steps start_step + 1 .. total_steps (see the module docstring). SIGTERM is caught while the loop runs."""
    after_step = getattr(task, "after_step", None)
    after_epoch = getattr(task, "after_epoch", None)
    on_nonfinite = getattr(task, "on_nonfinite", None)
    result = LoopResult(last_step=start_step, interrupted=False, nonfinite=False)
    bar = tqdm(total=total_steps, initial=start_step, desc=desc, unit="step", dynamic_ncols=True,
               disable=not (progress and ctx.info.is_main))
    batches = task.batches(start_step)
    with runtime.SigtermFlag() as stop:
        try:
            for step in range(start_step + 1, total_steps + 1):
                started = time.perf_counter()
                batch = next(batches)
                torch.manual_seed(runtime.seed_from_words(seed, ctx.info.rank, step - 1))
                metrics = task.train_step(batch, step)
                result.last_step = step
                if not math.isfinite(metrics["loss"]):
                    result.nonfinite = stop.requested = True
                saved = bool(after_step(step, metrics)) if after_step else False
                if steps_per_epoch and step % steps_per_epoch == 0 and not result.nonfinite and after_epoch:
                    saved = bool(after_epoch(step // steps_per_epoch, step)) or saved
                stopping = stop.agreed(ctx.device, ctx.info.distributed)
                periodic = bool(checkpoint_iters) and step % checkpoint_iters == 0
                if result.nonfinite:
                    if on_nonfinite:
                        on_nonfinite(step, metrics)
                    break
                if (stopping or periodic) and step < total_steps and not saved:
                    result.last_saved = task.save_resume_state(step)
                bar.update(1)
                bar.set_postfix({k: f"{metrics[k]:.4g}" for k in ("loss", "lr") if k in metrics}, refresh=False)
                result.step_seconds.append(time.perf_counter() - started)
                if stopping and step < total_steps:
                    result.interrupted = True
                    break
        finally:
            bar.close()
    return result
