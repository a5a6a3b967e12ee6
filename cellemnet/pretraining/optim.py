"""Learning-rate schedules of both methods and LARC, as plain functions."""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import torch


def mocov2_lr(base_lr: float, epoch: int, epochs: int, schedule: Sequence[int], cos: bool) -> float:
    """MoCo's per-epoch lr: half-cosine to 0 over the epochs, or x0.1 at each milestone <= epoch."""
    if cos:
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))
    return base_lr * 0.1 ** sum(1 for milestone in schedule if epoch >= milestone)


def swav_lr(step: int, iters_per_epoch: int, epochs: int, base_lr: float, final_lr: float,
            warmup_epochs: int = 0, start_warmup: float = 0.0) -> float:
    """SwAV's per-iteration lr: linear warmup start_warmup -> base_lr, then cosine base_lr -> final_lr."""
    warmup = warmup_epochs * iters_per_epoch
    if step < warmup:
        return start_warmup + (base_lr - start_warmup) * step / warmup
    total = iters_per_epoch * (epochs - warmup_epochs)
    t = min(step - warmup, total)
    return final_lr + 0.5 * (base_lr - final_lr) * (1.0 + math.cos(math.pi * t / total))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


@torch.no_grad()
def larc_adapt_gradients_(params: Iterable[torch.nn.Parameter], weight_decay: float, trust_coefficient: float,
                          eps: float = 1e-8) -> None:
    """LARC (no clipping): g <- (g + wd p) * trust ||p|| / (||g|| + wd ||p|| + eps), per parameter tensor.

    Call after unscaling and before an SGD step whose own weight_decay is 0 (the decay is folded in here).
    Parameters with a zero norm or zero gradient keep their gradient (plus decay) unscaled, as in LARS.
    """
    for p in params:
        if p.grad is None:
            continue
        p_norm = torch.linalg.vector_norm(p)
        g_norm = torch.linalg.vector_norm(p.grad)
        local_lr = trust_coefficient * p_norm / (g_norm + weight_decay * p_norm + eps)
        local_lr = torch.where((p_norm > 0) & (g_norm > 0), local_lr, torch.ones_like(local_lr))
        p.grad.add_(p, alpha=weight_decay).mul_(local_lr)
