"""Fine-tuning a U-Net on a benchmark's training set (the original's Trainer, on CPU or GPU, with torchrun).

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
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from cellemnet.errors import ConfigError, InputError
from cellemnet.evaluation.augment import build_eval_transforms, build_train_transforms
from cellemnet.evaluation.data import SeededDraws, SegmentationDataset
from cellemnet.evaluation.metrics import AverageMeter, EMAMeter, batch_iou
from cellemnet.evaluation.model import build_unet, freeze_encoder, set_train_mode
from cellemnet.evaluation.weights import (
    EncoderWeights,
    checkpoint_label,
    checkpoint_name,
    resolve_pretraining,
    resolve_resume,
    resume_state_name,
    total_steps,
)
from cellemnet.runtime import (
    DistInfo,
    SigtermFlag,
    autocast,
    cleanup_distributed,
    ignore_sigterm,
    init_distributed,
    make_grad_scaler,
    seed_everything,
)


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
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config["lr"], total_steps=config["iters"])
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
    from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, SequentialSampler

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
    from cellemnet.encoder import checkpoint_kind, load_checkpoint_file

    ckpt = load_checkpoint_file(path)
    if checkpoint_kind(ckpt) != "a fine-tuning checkpoint" or any(k not in ckpt for k in ("state_dict", "norms")):
        raise InputError(f"{path}: expected a fine-tuning checkpoint (what evaluation/finetune.py writes); this is "
                         f"{checkpoint_kind(ckpt)}")
    return ckpt


def save_checkpoint(path: Path, payload: Mapping[str, Any]) -> Path:
    """Write atomically; when the folder refuses the write (full disk, lost permission), the trained model is not
    lost: it goes to a rescue file in the temp folder, and the message says where. Returns the path written."""
    from cellemnet.io import torch_bytes, write_or_rescue

    return write_or_rescue(path, torch_bytes(dict(payload)), "checkpoint")


def _metric_line(prefix: str, loss: float, ious: Mapping[str, float]) -> str:
    parts = [f"{prefix}_loss {loss:.4f}"] + [f"{prefix}_{k}_IoU {v:.4f}" for k, v in ious.items()]
    return " | ".join(parts)


def validate(model: nn.Module, loader, loss_fn, weights: EncoderWeights, config, device) -> tuple[float, dict]:
    """Mean loss and per-class IoU over the validation images (each image whole, any size)."""
    from cellemnet.evaluation.predict import Predictor

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
    'step_seconds': the wall time of each step}."""
    from cellemnet.tracking import start_run

    dist, device = init_distributed(config["device"])
    try:
        return _finetune(config, dist, device, config_path, progress, start_run)
    finally:
        cleanup_distributed()


def _finetune(config, dist, device, config_path, progress, start_run) -> dict[str, Any]:
    if dist.is_main and config["num_save_checkpoints"] > 0:
        from cellemnet.io import check_writable

        check_writable(config["model_dir"], "fine-tuning checkpoints")  # before any training, not after it
    seed_everything(config["seed"] + dist.rank)
    started = time.time()
    resume_path = resolve_resume(config)
    resume = load_training_checkpoint(resume_path) if resume_path else None

    weights = resolve_pretraining(config["pretraining"], config["norms"], encoder=config["encoder"])
    # The decoder and head get a seeded stream of their own: identical in every arm of one seed, whatever the
    # encoder (random, loaded, 1 or 3 channels) drew before them.
    model = build_unet(config["num_classes"], weights, config["encoder"], decoder_seed=config["seed"])
    trainable = freeze_encoder(model, config["finetune_layer"], config["unfreeze_encoder_bn"])
    if resume is not None:
        model.load_state_dict(resume["state_dict"], strict=True)
    model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    if dist.is_main:
        print(f"pretraining {config['pretraining']} | {weights.in_channels} channel(s) | norms {weights.norms} "
              f"| trainable parameters {trainable:,} | device {device}")

    data_dir = Path(config["data_dir"])
    train_set = SegmentationDataset(
        data_dir / "train", build_train_transforms(config["augmentations"], weights.norms, seed=config["seed"]),
        weights.in_channels,
        config["num_classes"], require_masks=True,
    )
    if len(train_set) < config["bsz"]:
        raise InputError(f"{data_dir / 'train'}: {len(train_set)} images, fewer than one batch (bsz={config['bsz']})")
    train_loader, train_sampler = _loader(train_set, config["bsz"], True, config["jobs"], device, dist,
                                          drop_last=True, seed=config["seed"])
    valid_loader = None
    if (data_dir / "valid" / "images").is_dir():
        valid_set = SegmentationDataset(data_dir / "valid", build_eval_transforms(weights.norms),
                                        weights.in_channels, config["num_classes"], require_masks=True)
        valid_loader, _ = _loader(valid_set, 1, False, min(config["jobs"], 2), device, DistInfo(), False, 0)

    ddp_model = model
    if dist.distributed:
        if device.type == "cuda":
            ddp_model = nn.SyncBatchNorm.convert_sync_batchnorm(ddp_model)
        ddp_model = nn.parallel.DistributedDataParallel(
            ddp_model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=False,
        )
    optimizer = make_optimizer(config, [p for p in ddp_model.parameters() if p.requires_grad])
    scheduler = make_scheduler(config, optimizer)
    loss_fn = make_loss(config, device)
    scaler = make_grad_scaler(device, config["amp"])

    total = total_steps(config)
    start = 1
    run_id = None
    if resume is not None:
        run_id = resume.get("run_id")
        if not config["restart_training"]:
            optimizer.load_state_dict(resume["optimizer"])
            scheduler.load_state_dict(resume["scheduler"])
            if "scaler" in resume:
                scaler.load_state_dict(resume["scaler"])
            start = int(resume.get("step", 0)) + 1
            if dist.is_main:
                print(f"resuming from {resume_path} at step {start} of {total}")

    label = checkpoint_label(config["pretraining"])
    tracker = start_run(
        config["experiment_name"], run_name=f"{label}_ft_{config['finetune_layer']}_{total}",
        params=config, enabled=config["logging"], rank=dist.rank, run_id=run_id,
        tracking_dir=config["tracking_dir"],
        tags={"stage": "finetune", "pretraining": label, "benchmark": config["experiment_name"]},
    )
    run_id = tracker.run_id or run_id
    if tracker.active and config_path:
        tracker.log_artifact(config_path, artifact_path="config")
    if tracker.active:
        import tempfile

        from cellemnet.config import save_config

        with tempfile.TemporaryDirectory() as tmp:
            resolved = Path(tmp) / "resolved_config.yaml"
            save_config(config, resolved)
            tracker.log_artifact(resolved, artifact_path="config")

    saves = save_points(total, config["num_save_checkpoints"])
    prints = print_points(total, config["num_prints"])
    model_dir = Path(config["model_dir"])
    names = config["class_names"]
    loss_meter = EMAMeter()
    iou_meters = [EMAMeter() for _ in range(config["num_classes"])]
    per_step = len(train_loader) if config["lr_policy"] == "MultiStep" else 1
    batches = _cycle(train_loader, train_sampler, skip_batches=(start - 1) * per_step)
    state_path = model_dir / resume_state_name(config)

    def training_state(step: int) -> dict[str, Any]:
        return {
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "norms": weights.norms,
            "in_channels": weights.in_channels,
            "num_classes": config["num_classes"],
            "encoder": config["encoder"],
            "pretraining": config["pretraining"],
            "config": dict(config),
            "run_id": run_id,
            "step": step,
            "total": total,
        }
    last_checkpoint, last_metrics = None, {}
    step_seconds: list[float] = []  # wall time of each step (data, compute, metrics, logging, checkpoint)
    in_train_mode = False

    bar = None
    if progress and dist.is_main:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=start - 1, desc=f"fine-tune {config['experiment_name']}", unit="step")
    status = "FAILED"
    stop = SigtermFlag()
    interrupted = False
    try:
        stop.__enter__()
        for step in range(start, total + 1):
            step_started = time.perf_counter()
            for _ in range(per_step):
                batch = next(batches)
                if not in_train_mode:  # at the start and after validation (which puts the model in eval mode)
                    set_train_mode(ddp_model)
                    in_train_mode = True
                x = batch["image"].to(device, non_blocking=True)
                y = batch["mask"].to(device, non_blocking=True)
                if device.type == "cuda":
                    x = x.contiguous(memory_format=torch.channels_last)
                optimizer.zero_grad(set_to_none=True)
                with autocast(device, enabled=config["amp"]):
                    logits = ddp_model(x)
                loss = loss_fn(logits.float(), y)
                if not torch.isfinite(loss):
                    raise ConfigError(f"training diverged at step {step} (loss {loss.item()}); lower 'lr'")
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                loss_meter.update(loss.item())
                for meter, v in zip(iou_meters, batch_iou(logits.detach().float(), y, config["num_classes"])):
                    meter.update(v)
            if step in prints and dist.is_main:
                ious = {names[i]: m.value for i, m in enumerate(iou_meters)}
                metrics = {"train_loss": loss_meter.value, **{f"train_{k}_IoU": v for k, v in ious.items()}}
                msg = f"step {step}/{total} | " + _metric_line("train", loss_meter.value, ious)
                if valid_loader is not None:
                    v_loss, v_ious = validate(ddp_model, valid_loader, loss_fn, weights, config, device)
                    in_train_mode = False
                    metrics.update({"valid_loss": v_loss, **{f"valid_{k}_IoU": v for k, v in v_ious.items()}})
                    msg += " | " + _metric_line("valid", v_loss, v_ious)
                tracker.log_metrics(metrics, step=step)
                last_metrics = metrics
                (bar.write if bar else print)(msg)
                loss_meter.reset()
                for m in iou_meters:
                    m.reset()
            if dist.distributed and step in prints:
                torch.distributed.barrier()
            scheduler.step()
            if step in saves and dist.is_main:
                last_checkpoint = save_checkpoint(model_dir / checkpoint_name(config, step, total),
                                                  training_state(step))
            stopping = stop.agreed(device, dist.distributed) and step < total
            periodic = config["checkpoint_iters"] and step % config["checkpoint_iters"] == 0 and step < total
            if (stopping or periodic) and dist.is_main:
                save_checkpoint(state_path, training_state(step))
            if bar is not None:
                bar.update(1)
            step_seconds.append(time.perf_counter() - step_started)
            if stopping:
                interrupted = True
                (bar.write if bar else print)(f"stopped by SIGTERM after step {step} of {total}; the state is in "
                                              f"{state_path}: continue with resume=auto")
                break
        status = "KILLED" if interrupted else "FINISHED"
    finally:
        stop.__exit__(None, None, None)
        if bar is not None:
            bar.close()
        tracker.end(status)
    if not interrupted and dist.is_main:
        state_path.unlink(missing_ok=True)  # finished: the checkpoints the user asked for are the result
    seconds = time.time() - started
    if dist.is_main and not interrupted:
        where = last_checkpoint if last_checkpoint else "(no checkpoint: num_save_checkpoints is 0)"
        print(f"finished {total - start + 1} step(s) in {seconds:.1f} s; checkpoint {where}")
    return {"checkpoint": str(last_checkpoint) if last_checkpoint else None, "run_id": run_id,
            "metrics": last_metrics, "seconds": seconds, "step_seconds": step_seconds, "interrupted": interrupted}
