"""SSL losses and their helpers as small pure functions (no module state).

`gather_distributed=True` makes a function reduce across all processes of the default process group; with one
process (or no group) it is the same computation.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def moco_logits(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """Instance-discrimination logits (N, 1 + K): the positive q.k first, then q against the queue (dim x K).

    q and k are L2-normalised (N, dim); the positive is always class 0.
    """
    positive = (q * k).sum(dim=1, keepdim=True)
    negatives = q @ queue.to(q.dtype)
    return torch.cat([positive, negatives], dim=1) / temperature


def infonce_loss(logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy with the positive at index 0 (MoCo's InfoNCE)."""
    labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits.float(), labels)


def topk_accuracy(logits: torch.Tensor, target: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> list[float]:
    """Percent of rows whose target is among the k largest logits, for each k.

    Ties count against the target, so collapsed (all-equal) logits score chance level or below, never 100 %.
    """
    target_logit = logits.gather(1, target[:, None])
    rank = (logits >= target_logit).sum(dim=1) - 1  # other entries at least as large as the target
    return [float((rank < k).float().mean() * 100.0) for k in ks]


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, epsilon: float, iterations: int, gather_distributed: bool = False) -> torch.Tensor:
    """Soft equipartitioned codes (B, K) for prototype scores (B, K), rows summing to 1.

    The transport plan has uniform marginals: over the global batch every prototype gets the same mass and every
    sample one unit. In fp32 whatever the autocast dtype (exp overflows in half precision).
    """
    distributed = gather_distributed and _distributed()
    q = torch.exp(scores.float() / epsilon).t()  # (K, B)
    n_protos = q.shape[0]
    n_samples = q.shape[1] * (torch.distributed.get_world_size() if distributed else 1)
    total = q.sum()
    if distributed:
        torch.distributed.all_reduce(total)
    q /= total
    for _ in range(iterations):
        row_sums = q.sum(dim=1, keepdim=True)
        if distributed:
            torch.distributed.all_reduce(row_sums)
        q /= row_sums
        q /= n_protos
        q /= q.sum(dim=0, keepdim=True)
        q /= n_samples
    q *= n_samples
    return q.t()


def swapped_prediction_loss(scores: list[torch.Tensor], codes: dict[int, torch.Tensor],
                            temperature: float) -> torch.Tensor:
    """SwAV loss: every crop's softmax(scores / t) predicts the codes of each *other* assigned crop.

    scores: one (B, K) tensor per crop; codes: {crop index: (B, K) codes}. Averaged over pairs.
    """
    total = scores[0].new_zeros((), dtype=torch.float32)
    for crop_id, q in codes.items():
        sub = total.new_zeros(())
        others = [v for v in range(len(scores)) if v != crop_id]
        for v in others:
            log_p = F.log_softmax(scores[v].float() / temperature, dim=1)
            sub = sub - (q * log_p).sum(dim=1).mean()
        total = total + sub / len(others)
    return total / len(codes)
