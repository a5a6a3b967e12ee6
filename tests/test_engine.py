"""The training engine's loop on a tiny task: the order of hooks, periodic and SIGTERM saves, non-finite losses,
resume resolution, metrics logging. (Both stages' exact kill-and-resume runs are tested in tests/pretraining and
tests/evaluation.)"""
from __future__ import annotations

import json
import os
import signal

import pytest
import torch

from cellemnet import engine
from cellemnet.errors import ConfigError
from cellemnet.runtime import DistInfo


class LinearTask:
    """Fits w to 3 by SGD on a scalar; records every call the engine makes."""

    def __init__(self, losses=None, sigterm_at=None, epoch_saves=False):
        self.w = torch.zeros(1, requires_grad=True)
        self.opt = torch.optim.SGD([self.w], lr=0.1)
        self.calls: list[tuple] = []
        self.losses = losses or {}
        self.sigterm_at = sigterm_at
        self.epoch_saves = epoch_saves
        self.saved: list[int] = []

    def batches(self, start_step):
        self.calls.append(("batches", start_step))
        i = start_step
        while True:
            yield torch.tensor([float(i)])
            i += 1

    def train_step(self, batch, step):
        self.calls.append(("step", step, int(batch.item())))
        self.opt.zero_grad()
        loss = (self.w - 3.0).pow(2).sum()
        loss.backward()
        self.opt.step()
        if step == self.sigterm_at:
            os.kill(os.getpid(), signal.SIGTERM)
        return {"loss": self.losses.get(step, float(loss.detach()))}

    def after_step(self, step, metrics):
        self.calls.append(("after_step", step))
        return False

    def after_epoch(self, epoch, step):
        self.calls.append(("after_epoch", epoch, step))
        return self.epoch_saves

    def save_resume_state(self, step):
        self.saved.append(step)
        return None

    def on_nonfinite(self, step, metrics):
        self.calls.append(("nonfinite", step))


CPU = engine.Context(DistInfo(), torch.device("cpu"))


def test_the_loop_calls_hooks_in_order_resumes_from_start_step_and_learns():
    task = LinearTask()
    result = engine.run_loop(task, CPU, start_step=2, total_steps=6, seed=0, steps_per_epoch=2, progress=False)
    assert task.calls[0] == ("batches", 2)
    assert [c for c in task.calls if c[0] == "step"] == [("step", 3, 2), ("step", 4, 3), ("step", 5, 4),
                                                           ("step", 6, 5)]
    assert [c for c in task.calls if c[0] == "after_epoch"] == [("after_epoch", 2, 4), ("after_epoch", 3, 6)]
    i = task.calls.index(("step", 4, 3))
    assert task.calls[i + 1:i + 3] == [("after_step", 4), ("after_epoch", 2, 4)]
    assert result.last_step == 6 and not result.interrupted and not result.nonfinite
    assert len(result.step_seconds) == 4
    assert abs(float(task.w) - 3.0) < abs(0.0 - 3.0)  # the steps trained


def test_periodic_saves_skip_the_last_step_and_steps_a_hook_already_saved():
    task = LinearTask()
    engine.run_loop(task, CPU, start_step=0, total_steps=9, seed=0, checkpoint_iters=3, progress=False)
    assert task.saved == [3, 6]  # not 9: the run is finished there
    task = LinearTask(epoch_saves=True)
    engine.run_loop(task, CPU, start_step=0, total_steps=9, seed=0, checkpoint_iters=3, steps_per_epoch=3,
                    progress=False)
    assert task.saved == []  # every periodic save point was an epoch end, which saved


def test_sigterm_finishes_the_step_saves_and_stops():
    task = LinearTask(sigterm_at=4)
    before = signal.getsignal(signal.SIGTERM)
    result = engine.run_loop(task, CPU, start_step=0, total_steps=10, seed=0, progress=False)
    assert result.interrupted and result.last_step == 4 and task.saved == [4]
    assert signal.getsignal(signal.SIGTERM) is before  # the loop's handler is gone after it


def test_a_non_finite_loss_stops_the_loop_and_calls_the_task():
    task = LinearTask(losses={3: float("nan")})
    result = engine.run_loop(task, CPU, start_step=0, total_steps=10, seed=0, checkpoint_iters=1,
                             progress=False)
    assert result.nonfinite and not result.interrupted and result.last_step == 3
    assert task.calls[-1] == ("nonfinite", 3) and task.saved == [1, 2]


def test_each_step_draws_from_a_stream_keyed_by_seed_and_step():
    draws = {}

    class Draw(LinearTask):
        def train_step(self, batch, step):
            draws.setdefault(step, []).append(torch.rand(1).item())
            return {"loss": 0.0}

    engine.run_loop(Draw(), CPU, start_step=0, total_steps=4, seed=5, progress=False)
    engine.run_loop(Draw(), CPU, start_step=2, total_steps=4, seed=5, progress=False)  # a resumed run
    assert draws[3][0] == draws[3][1] and draws[4][0] == draws[4][1]
    assert draws[1][0] != draws[2][0]


def test_resolve_resume(tmp_path):
    latest = tmp_path / "state.pth"
    latest.write_bytes(b"x")
    assert engine.resolve_resume("", lambda: latest) is None
    assert engine.resolve_resume("auto", lambda: latest) == latest
    assert engine.resolve_resume("auto", lambda: None) is None
    assert engine.resolve_resume(str(latest), lambda: None) == latest
    with pytest.raises(ConfigError, match="key 'resume': checkpoint not found: .*missing.pth"):
        engine.resolve_resume(str(tmp_path / "missing.pth"), lambda: None)


def test_save_state_writes_every_path_and_reads_back_safely(tmp_path):
    paths = [tmp_path / "a" / "current.pth", tmp_path / "a" / "kept.pth"]
    assert engine.save_state({"step": 3, "w": torch.ones(2)}, paths) == paths[0]
    for p in paths:
        state = torch.load(p, weights_only=True)
        assert state["step"] == 3 and state["w"].sum() == 2
    assert not list((tmp_path / "a").glob("*.tmp*"))


def test_metrics_log_writes_json_lines_on_the_main_process_only(tmp_path):
    class Tracker:
        logged = []

        def log_metrics(self, metrics, step=None):
            self.logged.append((dict(metrics), step))

    tracker = Tracker()
    engine.MetricsLog(tracker, tmp_path / "m.jsonl", is_main=True).log({"loss": 0.5}, 7, epoch=1)
    engine.MetricsLog(tracker, tmp_path / "other.jsonl", is_main=False).log({"loss": 0.4}, 8)
    assert [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()] == [
        {"epoch": 1, "step": 7, "loss": 0.5}]
    assert not (tmp_path / "other.jsonl").exists()
    assert tracker.logged == [({"loss": 0.5}, 7), ({"loss": 0.4}, 8)]
