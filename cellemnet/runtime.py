"""Devices, precision, seeding and torch.distributed set-up shared by pretraining and evaluation.

Imports torch: only the torch-using stages import this module.
"""
from __future__ import annotations

import contextlib
import os
import random
import signal
from dataclasses import dataclass

import numpy as np
import torch

from cellemnet.errors import ConfigError


def select_device(preference: str = "auto") -> torch.device:
    """'auto' picks CUDA when present, else the CPU; 'cpu' and 'cuda[:N]' are honoured as given."""
    if preference in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(preference)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{preference}' was asked for but CUDA is not available")
    return device


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 where the GPU supports it, else fp16; None on the CPU (AMP is a GPU feature here)."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device, enabled: bool = True):
    """An autocast context for the GPU, a no-op context on the CPU or when disabled."""
    dtype = amp_dtype(device)
    if not enabled or dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def to_device(x: torch.Tensor, device: torch.device, channels_last: bool = False) -> torch.Tensor:
    """A batch on `device` (non-blocking from pinned memory), in channels_last layout when asked (GPU speed)."""
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def make_grad_scaler(device: torch.device, enabled: bool = True) -> torch.amp.GradScaler:
    """A grad scaler that is active only for fp16 autocast (bf16 and fp32 need none)."""
    active = enabled and amp_dtype(device) == torch.float16
    return torch.amp.GradScaler(device.type if device.type == "cuda" else "cpu", enabled=active)


def seed_from_words(*words: int) -> int:
    """One 63-bit seed from integers (e.g. seed, epoch, position): distinct words give independent streams.

    Randomness keyed by where it happens (the draw, the step), not by how far a generator has run, is what lets a
    resumed run repeat an uninterrupted one exactly."""
    sequence = np.random.SeedSequence([int(w) % 2**32 for w in words])
    return int(sequence.generate_state(1, np.uint64)[0] >> np.uint64(1))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in a torchrun launch (world_size 1 for a plain `python` run)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def torchrun_rank() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment; (0, 1) for a plain `python script.py`."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed(device_preference: str = "auto") -> tuple[DistInfo, torch.device]:
    """Initialise torch.distributed from torchrun's env:// variables when present.

    NCCL on GPUs, gloo on the CPU. A plain `python script.py` run gets world_size 1 and no process group.
    """
    rank, world_size = torchrun_rank()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    info = DistInfo(rank=rank, local_rank=local_rank, world_size=world_size)
    device = select_device(device_preference)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank if world_size > 1 else (device.index or 0))
        torch.cuda.set_device(device)
    if world_size > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend=backend, init_method="env://")
    return info, device


def cleanup_distributed() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


class SigtermFlag:
    """While entered, SIGTERM (SLURM's notice, `kill`) sets a flag instead of killing: the training loop finishes
    its step, saves, and stops. Outside the main thread (a notebook worker) there is no graceful stop."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def _handler(self, signum, frame) -> None:
        self.requested = True

    def __enter__(self) -> "SigtermFlag":
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handler)
        except ValueError:
            self._previous = None
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def agreed(self, device: torch.device, distributed: bool) -> bool:
        """Whether any process was asked to stop (all of them must stop at the same step)."""
        if not distributed:
            return self.requested
        flag = torch.tensor([1.0 if self.requested else 0.0], device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())


def ignore_sigterm(worker_id: int) -> None:
    """DataLoader workers ignore SIGTERM sent to the whole process group (SLURM, `kill -- -PGID`): the main
    process finishes its step, saves, and shuts them down; a dead worker would abort the run before the save."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
