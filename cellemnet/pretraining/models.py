"""Encoders and the two SSL models.

The trunk is torchvision's ResNet with a 1-channel 7x7 conv1 and its fc replaced by a head, so checkpoint names
are torchvision's (`encoder_q.layer1.0.conv1.weight` for MoCo, `encoder.layer1...` for SwAV) and export is a prefix
strip.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cellemnet.encoder import one_channel_resnet
from cellemnet.pretraining.losses import moco_logits


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


@torch.no_grad()
def all_gather_cat(x: torch.Tensor) -> torch.Tensor:
    """Concatenate x (same shape on every rank) over all ranks, in rank order; x itself when not distributed."""
    if not _distributed():
        return x
    parts = [torch.empty_like(x) for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather(parts, x.contiguous())
    return torch.cat(parts)


class MoCo(nn.Module):
    """MoCo v2: query encoder, EMA key encoder, queue of negative keys, shuffled BN across processes."""

    def __init__(self, arch: str = "resnet50", dim: int = 128, queue_size: int = 65536, momentum: float = 0.999,
                 temperature: float = 0.2, mlp: bool = True, mlp_bn: bool = False, bn_splits: int = 1):
        super().__init__()
        self.queue_size, self.momentum, self.temperature = queue_size, momentum, temperature
        self.bn_splits = bn_splits
        self.encoder_q = self._encoder(arch, dim, mlp, mlp_bn)
        self.encoder_k = self._encoder(arch, dim, mlp, mlp_bn)
        self.encoder_k.load_state_dict(self.encoder_q.state_dict())
        for p in self.encoder_k.parameters():
            p.requires_grad_(False)
        self.register_buffer("queue", F.normalize(torch.randn(dim, queue_size), dim=0))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    @staticmethod
    def _encoder(arch: str, dim: int, mlp: bool, mlp_bn: bool = False) -> nn.Module:
        trunk = one_channel_resnet(arch)
        width = trunk.fc.in_features
        if mlp and mlp_bn:
            # BN centres the post-ReLU trunk features (all positive, so nearly parallel at init): embeddings start
            # spread and InfoNCE's gradients do not vanish (SimCLR, MoCo v3 heads).
            trunk.fc = nn.Sequential(nn.Linear(width, width, bias=False), nn.BatchNorm1d(width), nn.ReLU(),
                                     nn.Linear(width, dim, bias=False), nn.BatchNorm1d(dim, affine=False))
        elif mlp:
            trunk.fc = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, dim))
        else:
            trunk.fc = nn.Linear(width, dim)
        return trunk

    @torch.no_grad()
    def momentum_update_key_encoder(self) -> None:
        q_params = list(self.encoder_q.parameters())
        k_params = list(self.encoder_k.parameters())
        torch._foreach_lerp_(k_params, q_params, 1.0 - self.momentum)  # k = m k + (1 - m) q, one fused kernel

    @torch.no_grad()
    def dequeue_and_enqueue(self, keys: torch.Tensor) -> None:
        """Write keys (G, dim) into the queue at the pointer, wrapping around the end."""
        keys = all_gather_cat(keys)
        ptr = int(self.queue_ptr)
        idx = (ptr + torch.arange(keys.shape[0], device=keys.device)) % self.queue_size
        self.queue[:, idx] = keys.t().to(self.queue.dtype)
        self.queue_ptr[0] = (ptr + keys.shape[0]) % self.queue_size

    @torch.no_grad()
    def _keys(self, im_k: torch.Tensor) -> torch.Tensor:
        """Key features; across processes the batch is shuffled first so BN statistics mix samples of all ranks."""
        if not _distributed():
            # at least 8 keys per chunk: BN statistics of fewer are mostly noise (and of 1 undefined)
            splits = min(self.bn_splits, im_k.shape[0] // 8)
            if splits <= 1 or not self.training:
                return F.normalize(self.encoder_k(im_k), dim=1)
            # One process: shuffled BN by hand. Keys are encoded in random chunks, so their BN statistics differ
            # from the query batch's and the model cannot tell "current batch" from "queue" by them.
            perm = torch.randperm(im_k.shape[0], device=im_k.device)
            k = torch.cat([self.encoder_k(chunk) for chunk in im_k[perm].chunk(splits)])
            return F.normalize(k, dim=1)[torch.argsort(perm)]
        world, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
        gathered = all_gather_cat(im_k)
        perm = torch.randperm(gathered.shape[0], device=im_k.device)
        torch.distributed.broadcast(perm, src=0)
        local = perm.view(world, -1)[rank]
        k = F.normalize(self.encoder_k(gathered[local]), dim=1)
        k_all = all_gather_cat(k)
        return k_all[torch.argsort(perm).view(world, -1)[rank]]

    def forward(self, im_q: torch.Tensor, im_k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (N, 1 + K) with the positive at 0, and the keys (to enqueue after the loss)."""
        q = F.normalize(self.encoder_q(im_q), dim=1)
        self.momentum_update_key_encoder()
        k = self._keys(im_k)
        logits = moco_logits(q, k.to(q.dtype), self.queue.clone().detach(), self.temperature)
        return logits, k


class SwAV(nn.Module):
    """SwAV: trunk -> projection head -> L2-normalised embedding -> prototype scores (multi-crop forward)."""

    def __init__(self, arch: str = "resnet50", hidden_mlp: int = 2048, feat_dim: int = 128,
                 nmb_prototypes: int = 3000):
        super().__init__()
        self.encoder = one_channel_resnet(arch)
        width = self.encoder.fc.in_features
        self.encoder.fc = nn.Identity()
        if hidden_mlp:
            self.projection_head = nn.Sequential(nn.Linear(width, hidden_mlp), nn.BatchNorm1d(hidden_mlp),
                                                 nn.ReLU(inplace=True), nn.Linear(hidden_mlp, feat_dim))
        else:
            self.projection_head = nn.Linear(width, feat_dim)
        self.prototypes = nn.Linear(feat_dim, nmb_prototypes, bias=False)

    @torch.no_grad()
    def normalize_prototypes(self) -> None:
        self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))

    def forward(self, crops: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(embeddings, scores) for all crops, rows crop-major: rows [c*B, (c+1)*B) belong to crop c."""
        feats, start = [], 0
        while start < len(crops):  # one trunk pass per run of equally sized crops
            end = start
            while end < len(crops) and crops[end].shape[-1] == crops[start].shape[-1]:
                end += 1
            feats.append(self.encoder(torch.cat(crops[start:end])))
            start = end
        z = F.normalize(self.projection_head(torch.cat(feats)), dim=1)
        return z, self.prototypes(z)
