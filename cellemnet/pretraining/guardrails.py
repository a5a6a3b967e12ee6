"""Checks of SSL settings against the data, made before any training step (pure functions, no torch).

Each rule exists because breaking it makes a run that trains for hours and learns nothing:

* MoCo queue vs data: the queue holds the K most recent keys. With K keys and N patches, a query meets its own
  patch's earlier key among its "negatives" about K/N times; at K >= N every query is pushed away from itself and
  the task has no solution. We require K <= N / 4 (one stale self-key for at most a quarter of the queries).
* SwAV prototypes vs data: Sinkhorn spreads every batch (+ queue) evenly over the prototypes; with more prototypes
  than a quarter of the patches most prototypes can only hold one or two patches, and the equipartition forces
  views of the same patch onto different prototypes. We require nmb_prototypes <= N / 4, and warn when a batch
  (+ queue) holds fewer samples than there are prototypes.
* SwAV queue vs data: the queue stores embeddings of past batches; longer than N / 2 it holds each patch's own
  stale embedding, and the codes of a batch are computed mostly against copies of itself.
* Learning rate: the papers' recipes are lr 0.015 at a global batch of 128 (MoCoV2, CEM500K) and 0.6 at 64
  (SwAV, CEM1.5M with LARC). SGD's lr scales linearly with the batch (Goyal et al. 2017); `lr_scaling: linear`
  applies that rule to the configured `lr` (read as the rate at `lr_reference_batch`).
* Key-encoder momentum: the MoCo key encoder is an EMA of the query encoder; after S steps at constant m a fraction
  m**S of it is still its random init (0.999 over 120 steps: 89 %). Short runs need a smaller m or the cosine
  schedule m -> 1 (`moco_m_schedule: cosine`).

`allow_unsafe_ssl: true` turns the errors into loud warnings (for users who know why).
"""
from __future__ import annotations

import math
from typing import Any

from cellemnet.errors import ConfigError

QUEUE_FRACTION = 4  # MoCo: K <= N / 4
PROTOTYPE_FRACTION = 4  # SwAV: nmb_prototypes <= N / 4
SWAV_QUEUE_FRACTION = 2  # SwAV: queue_length <= N / 2
STALE_KEY_ENCODER = 0.5  # warn when more than half of the key encoder is still its init at the end
LR_RATIO_WARN = 4.0  # warn when lr / batch is this far from the paper's rule without lr_scaling

# The papers' learning rate and the global batch it was tuned for.
PAPER_LR = {"mocov2": (0.015, 128), "swav": (0.6, 64)}


def _power_of_two_at_most(x: float) -> int:
    return 2 ** int(math.floor(math.log2(x))) if x >= 1 else 1


def max_moco_queue(n_patches: int) -> int:
    """The largest queue the rule allows, rounded down to a power of two (at least 1)."""
    return _power_of_two_at_most(n_patches / QUEUE_FRACTION)


def queue_problem(moco_k: int, n_patches: int) -> str | None:
    if moco_k * QUEUE_FRACTION <= n_patches:
        return None
    return (f"key 'moco_k': a queue of {moco_k} keys for {n_patches} patches makes each query's own patch one of "
            f"its negatives {moco_k / n_patches:.2g} times on average (the task then has no solution); "
            f"use moco_k={max_moco_queue(n_patches)} (at most a quarter of the patches) or curate more patches")


def swav_problems(cfg: dict[str, Any], n_patches: int) -> list[str]:
    problems = []
    k = cfg["nmb_prototypes"]
    if k * PROTOTYPE_FRACTION > n_patches:
        problems.append(
            f"key 'nmb_prototypes': {k} prototypes for {n_patches} patches leaves about "
            f"{n_patches / k:.2g} patches per prototype; use nmb_prototypes="
            f"{max(_power_of_two_at_most(n_patches / PROTOTYPE_FRACTION), 2)} (at most a quarter of the patches)")
    q = cfg["queue_length"]
    if q * SWAV_QUEUE_FRACTION > n_patches:
        problems.append(
            f"key 'queue_length': a queue of {q} embeddings for {n_patches} patches holds stale copies of the "
            f"batch's own patches; use queue_length={_power_of_two_at_most(n_patches / SWAV_QUEUE_FRACTION)} "
            f"(at most half of the patches) or 0")
    return problems


def check_data_settings(cfg: dict[str, Any], method: str, n_patches: int) -> list[str]:
    """Raise ConfigError for settings that cannot work on n_patches patches; return the warnings to show (the
    errors too, when allow_unsafe_ssl is set). `cfg["_planned_steps"]` (optional) enables the momentum check."""
    problems = []
    if method == "mocov2":
        p = queue_problem(cfg["moco_k"], n_patches)
        problems += [p] if p else []
    elif method == "swav":
        problems += swav_problems(cfg, n_patches)
    issued = []
    if problems and not cfg.get("allow_unsafe_ssl", False):
        raise ConfigError(problems[0] + " (or set allow_unsafe_ssl=true to train anyway)")
    for p in problems:
        issued.append(f"UNSAFE SETTING, training anyway (allow_unsafe_ssl): {p}")
    return issued + advisory_warnings(cfg, method, n_patches)


def effective_lr(cfg: dict[str, Any]) -> float:
    """The lr the optimizer uses: `lr`, or with lr_scaling=linear lr * batch_size / lr_reference_batch."""
    if cfg.get("lr_scaling", "none") == "linear":
        return cfg["lr"] * cfg["batch_size"] / cfg["lr_reference_batch"]
    return cfg["lr"]


def paper_lr(method: str, batch_size: int) -> float:
    """The paper's lr scaled linearly to batch_size."""
    lr, batch = PAPER_LR[method]
    return lr * batch_size / batch


def stale_key_fraction(moco_m: float, steps: int, schedule: str = "constant") -> float:
    """Fraction of the key encoder still at its initial weights after `steps` EMA updates."""
    if schedule == "cosine":
        return math.prod(moco_momentum(moco_m, s, steps, "cosine") for s in range(steps))
    return moco_m ** steps


def moco_momentum(base: float, step: int, total_steps: int, schedule: str) -> float:
    """Key-encoder EMA momentum at `step`: constant, or cosine from `base` at step 0 to 1 at the end (BYOL)."""
    if schedule == "constant" or total_steps <= 0:
        return base
    t = min(step / total_steps, 1.0)
    return 1.0 - (1.0 - base) * (math.cos(math.pi * t) + 1.0) / 2.0


def advisory_warnings(cfg: dict[str, Any], method: str, n_patches: int) -> list[str]:
    """Settings that are allowed but usually wrong: lr far from the linear rule, a key encoder that won't move."""
    out = []
    lr = effective_lr(cfg)
    rule = paper_lr(method, cfg["batch_size"])
    if cfg.get("lr_scaling", "none") == "none" and not (1 / LR_RATIO_WARN <= lr / rule <= LR_RATIO_WARN):
        out.append(f"key 'lr': {lr:g} at a global batch of {cfg['batch_size']} is {lr / rule:.2g}x the paper's "
                   f"{PAPER_LR[method][0]:g} @ {PAPER_LR[method][1]} scaled linearly ({rule:.3g}); set "
                   f"lr_scaling=linear to apply the rule")
    if method == "mocov2":
        steps = cfg.get("_planned_steps")
        if steps:
            stale = stale_key_fraction(cfg["moco_m"], steps, cfg.get("moco_m_schedule", "constant"))
            if stale > STALE_KEY_ENCODER:
                fix = ("use moco_m_schedule=cosine with moco_m=0.99, or a smaller moco_m"
                       if cfg.get("moco_m_schedule", "constant") == "constant"
                       else "use a smaller moco_m or more steps")
                out.append(f"key 'moco_m': {cfg['moco_m']:g} ({cfg.get('moco_m_schedule', 'constant')}) over "
                           f"{steps} steps leaves {stale:.0%} of the key encoder at its random init; {fix}")
    return out
