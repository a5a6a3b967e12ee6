"""Fine-tuning a U-Net on a benchmark's training set (the original's Trainer, on CPU or GPU, with torchrun), as a
task of the training engine (cellemnet/engine.py: the loop, SIGTERM, resume, checkpoint writes, MLflow).

Schedules, as the original:
* OneCycle / Poly: `iters` iterations; one scheduler step per iteration.
* MultiStep: `epochs` epochs over the training set; milestones `lr_decay_epochs`; one step per epoch.
Train (and, with a `valid/` split, validation) metrics are printed and logged `num_prints` times.
Checkpoints: `{model_dir}/{experiment}-{pretraining}_ft_{layer}_epoch{E}_of_{T}.pth`, `num_save_checkpoints`
of them evenly spaced (the last at the end; 0 = never), each written atomically with the model, optimizer and
scheduler state, norms, config and MLflow run id, so `resume=PATH` continues where it stopped.
Apart from those, the state of a run in progress goes to `{model_dir}/{experiment}-{pretraining}_ft_{layer}_resume.pth`
every `checkpoint_iters` steps and on SIGTERM (then the run stops, exit 143); `resume=auto` continues from it, and
a killed and resumed run ends with the weights of an uninterrupted one (augmentations are keyed by their draw).
Logged metrics also go to `{model_dir}/{experiment}-{pretraining}_ft_{layer}_metrics.jsonl`, one line per print.
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, SequentialSampler

from cellemnet import engine
from cellemnet.config import save_config
from cellemnet.encoder import checkpoint_kind, load_checkpoint_file
from cellemnet.errors import ConfigError, InputError
from cellemnet.evaluation.augment import build_eval_transforms, build_train_transforms
from cellemnet.evaluation.data import SeededDraws, SegmentationDataset
from cellemnet.evaluation.metrics import AverageMeter, EMAMeter, batch_iou
from cellemnet.evaluation.model import (
    build_unet,
    freeze_encoder,
    parameter_groups,
    recompute_bn_statistics,
    set_train_mode,
)
from cellemnet.evaluation.predict import Predictor, pad_to_divisor
from cellemnet.evaluation.weights import (
    EncoderWeights,
    checkpoint_label,
    checkpoint_name,
    metrics_log_name,
    resolve_pretraining,
    resume_state_name,
    total_steps,
)
from cellemnet.io import check_writable
from cellemnet.runtime import (
    DistInfo,
    autocast,
    cleanup_distributed,
    ignore_sigterm,
    make_grad_scaler,
    seed_everything,
    to_device,
)
from cellemnet.tracking import start_run

__all__ = ["checkpoint_name", "finetune", "load_training_checkpoint", "log_model", "make_loss", "make_optimizer",
           "make_scheduler", "print_points", "save_points", "validate"]


def save_points(total: int, n: int) -> set[int]:
    """Steps at which a checkpoint is written: n evenly spaced, the last one at `total`; none for n = 0."""
    if n <= 0:
        return set()
    n = min(n, total)
    return {round(total * (i + 1) / n) for i in range(n)}


def print_points(total: int, n: int) -> set[int]:
    every = max(total // max(n, 1), 1)
    return {s for s in range(1, total + 1) if s % every == 0} | {total}


def make_optimizer(config: Mapping[str, Any], params) -> torch.optim.Optimizer:
    """AdamW or SGD over `params` (tensors, or parameter groups that carry their own lr)."""
    # foreach: torch's default on the GPU; on the CPU it is bitwise the for-loop update, and a third faster
    # (the for-loop AdamW was ~13 % of a U-Net-ResNet-50 CPU step).
    if config["optim"] == "AdamW":
        return torch.optim.AdamW(params, lr=config["lr"], weight_decay=config["wd"], foreach=True)
    return torch.optim.SGD(params, lr=config["lr"], momentum=config["momentum"], weight_decay=config["wd"],
                           foreach=True)


class PolyFactor:
    """(1 - step / iters) ** power; a class (not a lambda) so the scheduler state stays plain data."""

    def __init__(self, iters: int, power: float):
        self.iters, self.power = iters, power

    def __call__(self, step: int) -> float:
        return max(1.0 - step / self.iters, 0.0) ** self.power


def make_scheduler(config: Mapping[str, Any], optimizer: torch.optim.Optimizer):
    policy = config["lr_policy"]
    if policy == "OneCycle":
        # each group peaks at its own lr (the encoder's is scaled by encoder_lr_scale)
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=[g["lr"] for g in optimizer.param_groups],
                                                   total_steps=config["iters"])
    if policy == "Poly":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, PolyFactor(config["iters"], config["power"]))
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(config["lr_decay_epochs"]), gamma=0.1)


def make_loss(config: Mapping[str, Any], device: torch.device) -> nn.Module:
    if config["num_classes"] > 1:
        weight = None
        if config["class_weights"] is not None:
            weight = torch.tensor(config["class_weights"], dtype=torch.float32, device=device)
        return nn.CrossEntropyLoss(weight=weight)
    return nn.BCEWithLogitsLoss()


def _cycle(loader, sampler=None, skip_batches: int = 0):
    """Endless iteration over a DataLoader (a new shuffle, and DistributedSampler epoch, each pass), starting
    after `skip_batches` batches (a resumed run): the batches that follow are those an uninterrupted run saw."""
    epoch, into_epoch = divmod(skip_batches, max(len(loader), 1))
    if skip_batches and sampler is not None:
        sampler.fast_forward(epoch, into_epoch * loader.batch_size)
    while True:
        if sampler is not None:
            sampler.set_epoch(epoch)
        for batch in loader:
            yield batch
        epoch += 1


def _loader(dataset, batch_size: int, shuffle: bool, jobs: int, device: torch.device, dist: DistInfo,
            drop_last: bool, seed: int):
    """A DataLoader whose order and augmentation follow from `seed` (and the rank) alone, for any `jobs`.

    The shuffle has a generator of its own, the workers' base seeds another one (so they never shift the
    order), and with shuffle each draw carries its seed words (SeededDraws) for the augmentation.
    """
    if dist.distributed and shuffle:
        sampler = DistributedSampler(dataset, num_replicas=dist.world_size, rank=dist.rank, shuffle=True, seed=seed)
    elif shuffle:
        sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(seed))
    else:
        sampler = SequentialSampler(dataset)
    if shuffle:
        sampler = SeededDraws(sampler, stream=(seed, dist.rank))
    loader = DataLoader(
        dataset, batch_size=batch_size, sampler=sampler,
        num_workers=jobs, pin_memory=device.type == "cuda", drop_last=drop_last,
        persistent_workers=jobs > 0, generator=torch.Generator().manual_seed(seed + 1),
        worker_init_fn=ignore_sigterm if jobs > 0 else None,
    )
    return loader, sampler


def load_training_checkpoint(path: str | Path) -> dict[str, Any]:
    ckpt = load_checkpoint_file(path)
    if checkpoint_kind(ckpt) != "a fine-tuning checkpoint" or any(k not in ckpt for k in ("state_dict", "norms")):
        raise InputError(f"{path}: expected a fine-tuning checkpoint (what evaluation/finetune.py writes); this is "
                         f"{checkpoint_kind(ckpt)}")
    return ckpt


def _metric_line(prefix: str, loss: float, ious: Mapping[str, float]) -> str:
    parts = [f"{prefix}_loss {loss:.4f}"] + [f"{prefix}_{k}_IoU {v:.4f}" for k, v in ious.items()]
    return " | ".join(parts)


def validate(model: nn.Module, loader, loss_fn, weights: EncoderWeights, config, device) -> tuple[float, dict]:
    """Mean loss and per-class IoU over the validation images (each image whole, any size)."""
    unwrapped = model.module if hasattr(model, "module") else model
    predictor = Predictor(unwrapped, weights.norms, weights.in_channels, config["num_classes"], device,
                          amp=config["amp"])
    loss_meter = AverageMeter()
    iou_meters = [AverageMeter() for _ in range(config["num_classes"])]
    for batch in loader:
        x = batch["image"].to(device)
        y = batch["mask"].to(device)
        logits = predictor.logits_tensor(x)
        loss_meter.update(loss_fn(logits, y).item())
        for meter, v in zip(iou_meters, batch_iou(logits, y, config["num_classes"])):
            meter.update(v)
    names = config["class_names"]
    return loss_meter.value, {names[i]: m.value for i, m in enumerate(iou_meters)}


def finetune(config: dict[str, Any], config_path: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Train as the config says; returns {'checkpoint': last path or None, 'run_id', 'metrics', 'seconds',
    'step_seconds': the wall time of each step, 'interrupted'}."""
    ctx = engine.start(config["device"], config["amp"], channels_last=True)
    try:
        return _finetune(config, ctx, config_path, progress)
    finally:
        cleanup_distributed()


def resolve_resume(config: Mapping[str, Any]) -> Path | None:
    """'' -> None; 'auto' -> this run's resume state in model_dir, or None (a fresh start); else the given file."""
    state = Path(config["model_dir"]) / resume_state_name(config)
    return engine.resolve_resume(config["resume"], lambda: state if state.is_file() else None)


class FinetuneTask:
    """The engine's task for one fine-tuning run: batches from the seeded loader, one optimizer step per iteration
    (one epoch per step with MultiStep), prints with validation, the scheduler, and the checkpoints asked for."""

    def __init__(self, config: dict[str, Any], ctx: engine.Context, model: nn.Module, weights: EncoderWeights,
                 loaders: dict[str, Any], log: engine.MetricsLog, run_id: str | None):
        self.config, self.ctx, self.model, self.weights, self.log = config, ctx, model, weights, log
        self.ddp_model = _wrap(model, ctx)
        self.optimizer = make_optimizer(config, parameter_groups(self.ddp_model, config["lr"],
                                                                  config["encoder_lr_scale"]))
        self.scheduler = make_scheduler(config, self.optimizer)
        self.loss_fn = make_loss(config, ctx.device)
        self.scaler = make_grad_scaler(ctx.device, config["amp"])
        self.train_loader, self.sampler = loaders["train"]
        self.valid_loader = loaders.get("valid")
        self.bn_images = loaders.get("bn_images")
        self.run_id = run_id
        self.total = total_steps(config)
        self.saves = save_points(self.total, config["num_save_checkpoints"])
        self.prints = print_points(self.total, config["num_prints"])
        self.per_step = len(self.train_loader) if config["lr_policy"] == "MultiStep" else 1
        self.state_path = Path(config["model_dir"]) / resume_state_name(config)
        self.loss_meter = EMAMeter()
        self.iou_meters = [EMAMeter() for _ in range(config["num_classes"])]
        self.in_train_mode = False
        self.last_checkpoint: Path | None = None
        self.last_metrics: dict[str, float] = {}

    def load(self, resume: Mapping[str, Any]) -> None:
        self.optimizer.load_state_dict(resume["optimizer"])
        self.scheduler.load_state_dict(resume["scheduler"])
        if "scaler" in resume:
            self.scaler.load_state_dict(resume["scaler"])

    def batches(self, start_step: int):
        stream = _cycle(self.train_loader, self.sampler, skip_batches=start_step * self.per_step)
        while True:
            yield [next(stream) for _ in range(self.per_step)]

    def train_step(self, group, step: int) -> dict[str, float]:
        config, device = self.config, self.ctx.device
        for batch in group:
            if not self.in_train_mode:  # at the start and after validation (which puts the model in eval mode)
                set_train_mode(self.ddp_model)
                self.in_train_mode = True
            x = to_device(batch["image"], device, self.ctx.channels_last)
            y = batch["mask"].to(device, non_blocking=True)
            self.optimizer.zero_grad(set_to_none=True)
            with autocast(device, enabled=config["amp"]):
                logits = self.ddp_model(x)
            loss = self.loss_fn(logits.float(), y)
            if not torch.isfinite(loss):
                raise ConfigError(f"training diverged at step {step} (loss {loss.item()}); lower 'lr'")
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.loss_meter.update(loss.item())
            for meter, v in zip(self.iou_meters, batch_iou(logits.detach().float(), y, config["num_classes"])):
                meter.update(v)
        return {"loss": self.loss_meter.value}

    def after_step(self, step: int, metrics: dict[str, float]) -> bool:
        ctx = self.ctx
        if step == self.total and self.config["precise_bn"] > 0:
            self._precise_bn()
        if step in self.prints and ctx.info.is_main:
            self._print(step)
        if ctx.info.distributed and step in self.prints:
            torch.distributed.barrier()
        self.scheduler.step()
        if step in self.saves and ctx.info.is_main:
            path = Path(self.config["model_dir"]) / checkpoint_name(self.config, step, self.total)
            self.last_checkpoint = engine.save_state(self.training_state(step), path)
        return False  # the checkpoints asked for are not what resume=auto continues from

    def _precise_bn(self) -> None:
        """Running BN statistics from the training images, un-augmented at native scale (what inference sees), in
        file order: no random number is drawn, so a resumed run ends with the same statistics."""
        images = self.bn_images
        n = min(len(images), self.config["precise_bn"])
        batches = (to_device(pad_to_divisor(images[i]["image"][None]), self.ctx.device, self.ctx.channels_last)
                   for i in range(n))
        layers = recompute_bn_statistics(self.ddp_model, batches)
        self.in_train_mode = False
        self.ctx.say(f"precise BN: running statistics of {layers} BatchNorm layer(s) from {n} training image(s)")

    def _print(self, step: int) -> None:
        names = self.config["class_names"]
        ious = {names[i]: m.value for i, m in enumerate(self.iou_meters)}
        metrics = {"train_loss": self.loss_meter.value, **{f"train_{k}_IoU": v for k, v in ious.items()}}
        msg = f"step {step}/{self.total} | " + _metric_line("train", self.loss_meter.value, ious)
        if self.valid_loader is not None:
            v_loss, v_ious = validate(self.ddp_model, self.valid_loader, self.loss_fn, self.weights, self.config,
                                      self.ctx.device)
            self.in_train_mode = False
            metrics.update({"valid_loss": v_loss, **{f"valid_{k}_IoU": v for k, v in v_ious.items()}})
            msg += " | " + _metric_line("valid", v_loss, v_ious)
        self.log.log(metrics, step)
        self.last_metrics = metrics
        self.ctx.say(msg)
        self.loss_meter.reset()
        for m in self.iou_meters:
            m.reset()

    def save_resume_state(self, step: int) -> Path | None:
        if not self.ctx.info.is_main:
            return None
        return engine.save_state(self.training_state(step), self.state_path)

    def training_state(self, step: int) -> dict[str, Any]:
        config = self.config
        return {
            "state_dict": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "norms": self.weights.norms,
            "in_channels": self.weights.in_channels,
            "num_classes": config["num_classes"],
            "encoder": config["encoder"],
            "pretraining": config["pretraining"],
            "config": dict(config),
            "run_id": self.run_id,
            "step": step,
            "total": self.total,
        }


def _wrap(model: nn.Module, ctx: engine.Context) -> nn.Module:
    """SyncBatchNorm across GPUs and DDP under torchrun; the model itself in one process."""
    if not ctx.info.distributed:
        return model
    if ctx.device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return engine.wrap_ddp(model, ctx)


def _build_model(config: dict[str, Any], ctx: engine.Context, resume: Mapping[str, Any] | None):
    weights = resolve_pretraining(config["pretraining"], config["norms"], encoder=config["encoder"])
    # The decoder and head get a seeded stream of their own: identical in every arm of one seed, whatever the
    # encoder (random, loaded, 1 or 3 channels) drew before them.
    model = build_unet(config["num_classes"], weights, config["encoder"], decoder_seed=config["seed"])
    trainable = freeze_encoder(model, config["finetune_layer"], config["unfreeze_encoder_bn"])
    if resume is not None:
        model.load_state_dict(resume["state_dict"], strict=True)
    model = engine.place_model(model, ctx)
    ctx.say(f"pretraining {config['pretraining']} | {weights.in_channels} channel(s) | norms {weights.norms} "
            f"| trainable parameters {trainable:,} | device {ctx.device}")
    return model, weights


def _data(config: dict[str, Any], ctx: engine.Context, weights: EncoderWeights) -> dict[str, Any]:
    data_dir = Path(config["data_dir"])
    train_set = SegmentationDataset(
        data_dir / "train", build_train_transforms(config["augmentations"], weights.norms, seed=config["seed"]),
        weights.in_channels, config["num_classes"], require_masks=True,
    )
    if len(train_set) < config["bsz"]:
        raise InputError(f"{data_dir / 'train'}: {len(train_set)} images, fewer than one batch (bsz={config['bsz']})")
    loaders: dict[str, Any] = {"train": _loader(train_set, config["bsz"], True, config["jobs"], ctx.device, ctx.info,
                                                drop_last=True, seed=config["seed"])}
    if config["precise_bn"] > 0:
        loaders["bn_images"] = SegmentationDataset(data_dir / "train", build_eval_transforms(weights.norms),
                                                   weights.in_channels, config["num_classes"], require_masks=True)
    if (data_dir / "valid" / "images").is_dir():
        valid_set = SegmentationDataset(data_dir / "valid", build_eval_transforms(weights.norms),
                                        weights.in_channels, config["num_classes"], require_masks=True)
        loaders["valid"] = _loader(valid_set, 1, False, min(config["jobs"], 2), ctx.device, DistInfo(), False, 0)[0]
    return loaders


def _start_tracking(config: dict[str, Any], ctx: engine.Context, config_path: str | None, run_id: str | None):
    label = checkpoint_label(config["pretraining"])
    tracker = start_run(
        config["experiment_name"], run_name=f"{label}_ft_{config['finetune_layer']}_{total_steps(config)}",
        params=config, enabled=config["logging"], rank=ctx.info.rank, run_id=run_id,
        tracking_dir=config["tracking_dir"],
        tags={"stage": "finetune", "pretraining": label, "benchmark": config["experiment_name"]},
    )
    if tracker.active and config_path:
        tracker.log_artifact(config_path, artifact_path="config")
    if tracker.active:
        with tempfile.TemporaryDirectory() as tmp:
            resolved = Path(tmp) / "resolved_config.yaml"
            save_config(config, resolved)
            tracker.log_artifact(resolved, artifact_path="config")
    return tracker


MODEL_EXAMPLE_SIZE = 64  # the logged model's input example: one synthetic EM image of this side


def log_model(tracker, model: nn.Module, weights: EncoderWeights, num_classes: int) -> str | None:
    """Log the trained U-Net to its MLflow run (a CPU copy in eval mode), with the signature of a normalised
    synthetic EM image -> logits; returns the model URI."""
    import copy

    import numpy as np

    from cellemnet.synthetic import make_image

    cpu_model = copy.deepcopy(model.module if hasattr(model, "module") else model).float().cpu().eval()
    cpu_model = cpu_model.to(memory_format=torch.contiguous_format)
    image = make_image((MODEL_EXAMPLE_SIZE, MODEL_EXAMPLE_SIZE), seed=0)[0]
    predictor = Predictor(cpu_model, weights.norms, weights.in_channels, num_classes, torch.device("cpu"), amp=False)
    example = predictor._prepare(image[None])  # the normalisation inference applies
    with torch.inference_mode():
        output = cpu_model(example)
    return tracker.log_model(cpu_model, example.numpy(), output.numpy().astype(np.float32))


def _finetune(config: dict[str, Any], ctx: engine.Context, config_path: str | None, progress: bool) -> dict[str, Any]:
    dist = ctx.info
    model_dir = Path(config["model_dir"])
    if dist.is_main and config["num_save_checkpoints"] > 0:
        check_writable(model_dir, "fine-tuning checkpoints")  # before any training, not after it
    seed_everything(config["seed"] + dist.rank)
    started = time.time()
    resume_path = resolve_resume(config)
    resume = load_training_checkpoint(resume_path) if resume_path else None
    model, weights = _build_model(config, ctx, resume)
    loaders = _data(config, ctx, weights)
    total = total_steps(config)
    start, run_id = 0, None
    if resume is not None:
        run_id = resume.get("run_id")
    tracker = _start_tracking(config, ctx, config_path, run_id)
    jsonl = model_dir / metrics_log_name(config) if dist.is_main and model_dir.is_dir() else None
    task = FinetuneTask(config, ctx, model, weights, loaders, engine.MetricsLog(tracker, jsonl, dist.is_main),
                        tracker.run_id or run_id)
    if resume is not None and not config["restart_training"]:
        task.load(resume)
        start = int(resume.get("step", 0))
        ctx.say(f"resuming from {resume_path} at step {start + 1} of {total}")
    status = "FAILED"
    try:
        loop = engine.run_loop(task, ctx, start_step=start, total_steps=total, seed=config["seed"],
                               checkpoint_iters=config["checkpoint_iters"],
                               desc=f"fine-tune {config['experiment_name']}", progress=progress)
        if config["log_model"] and tracker.active and not loop.interrupted:
            try:
                log_model(tracker, model, weights, config["num_classes"])
            except Exception as exc:  # the run's checkpoints and metrics are saved: a tracking extra must not fail it
                print(f"WARNING: the model was not logged to MLflow ({exc.__class__.__name__}: "
                      f"{' '.join(str(exc).split())[:200]}); log_model=false skips it", file=sys.stderr, flush=True)
        status = "KILLED" if loop.interrupted else "FINISHED"
    finally:
        tracker.end(status)
    if loop.interrupted:
        ctx.say(f"stopped by SIGTERM after step {loop.last_step} of {total}; the state is in {task.state_path}: "
                f"continue with resume=auto")
    elif dist.is_main:
        task.state_path.unlink(missing_ok=True)  # finished: the checkpoints the user asked for are the result
    seconds = time.time() - started
    if not loop.interrupted:
        where = task.last_checkpoint if task.last_checkpoint else "(no checkpoint: num_save_checkpoints is 0)"
        ctx.say(f"finished {total - start} step(s) in {seconds:.1f} s; checkpoint {where}")
    return {"checkpoint": str(task.last_checkpoint) if task.last_checkpoint else None, "run_id": task.run_id,
            "metrics": task.last_metrics, "seconds": seconds, "step_seconds": loop.step_seconds,
            "interrupted": loop.interrupted}
