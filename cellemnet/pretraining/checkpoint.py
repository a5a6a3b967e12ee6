"""Checkpoint files of a pretraining run: where they live, atomic saving, finding the newest, loading.

`<model_dir>/current.pth` is rewritten (atomically) at every epoch end, every `checkpoint_iters` iterations and on
SIGTERM; `<model_dir>/checkpoint_{epoch:04d}.pth` is kept every save_freq epochs and at the last epoch.
A checkpoint holds only tensors and plain Python types, so torch.load(..., weights_only=True) reads it.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from cellemnet import engine
from cellemnet.encoder import checkpoint_kind, load_checkpoint_file
from cellemnet.errors import InputError

CURRENT_NAME = "current.pth"
_KEPT = re.compile(r"checkpoint_(\d{4,})\.pth$")


def kept_name(epoch: int) -> str:
    return f"checkpoint_{epoch:04d}.pth"


def find_latest(model_dir: str | os.PathLike) -> Path | None:
    """The newest checkpoint in model_dir (current.pth or a kept one, by modification time), or None."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return None
    candidates = [p for p in model_dir.iterdir() if p.name == CURRENT_NAME or _KEPT.match(p.name)]
    return max(candidates, key=lambda p: p.stat().st_mtime_ns) if candidates else None


def resolve_resume(resume: str, model_dir: str | os.PathLike) -> Path | None:
    """'' -> None (fresh start); 'auto' -> newest in model_dir or None; otherwise the given file."""
    return engine.resolve_resume(resume, lambda: find_latest(model_dir))


def save_checkpoint(state: dict[str, Any], model_dir: str | os.PathLike, keep_epoch: int | None = None) -> Path:
    """Write current.pth atomically; with keep_epoch also a kept numbered copy. Returns current.pth's path (or,
    when model_dir refused the write late - a full disk - the rescue copy's path, which a warning names)."""
    model_dir = Path(model_dir)
    paths = [model_dir / CURRENT_NAME] + ([model_dir / kept_name(keep_epoch)] if keep_epoch is not None else [])
    return engine.save_state(state, paths)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A pretraining checkpoint to resume from; InputError saying what the file is when it is something else."""
    ckpt = load_checkpoint_file(path)
    kind = checkpoint_kind(ckpt)
    if not kind.endswith("pretraining checkpoint"):
        raise InputError(f"{path}: resume needs a pretraining checkpoint (<model_dir>/current.pth or "
                         f"checkpoint_NNNN.pth of train_mocov2.py/train_swav.py); this is {kind}")
    return ckpt
