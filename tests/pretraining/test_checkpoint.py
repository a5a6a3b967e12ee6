"""Checkpoint files: atomic save, kept copies, resume=auto picks the newest, plain types only."""
from __future__ import annotations

import os

import pytest
import torch

from cellemnet.errors import ConfigError
from cellemnet.pretraining import checkpoint as ck


def test_save_keeps_numbered_copies_and_auto_resume_finds_the_newest(tmp_path):
    assert ck.resolve_resume("auto", tmp_path / "none") is None  # fresh start when nothing is there
    assert ck.resolve_resume("", tmp_path) is None
    run = {"method": "mocov2", "optimizer": {}, "global_step": 0}  # what makes it a pretraining checkpoint
    ck.save_checkpoint({**run, "epoch": 1, "w": torch.ones(2)}, tmp_path, keep_epoch=1)
    ck.save_checkpoint({**run, "epoch": 2, "iteration": 3, "w": torch.zeros(2)}, tmp_path)
    os.utime(tmp_path / "checkpoint_0001.pth", (1, 1))  # make the kept copy clearly older
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_0001.pth", "current.pth"]
    latest = ck.resolve_resume("auto", tmp_path)
    assert latest.name == "current.pth"
    state = ck.load_checkpoint(latest)  # weights_only=True inside
    assert state["epoch"] == 2 and state["iteration"] == 3
    with pytest.raises(ConfigError, match="not found"):
        ck.resolve_resume(str(tmp_path / "missing.pth"), tmp_path)
