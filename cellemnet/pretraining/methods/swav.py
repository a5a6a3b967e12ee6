"""SwAV (Caron et al. 2020): online clustering with swapped prediction, multi-crop views, LARC."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from cellemnet import runtime
from cellemnet.encoder import Norms
from cellemnet.pretraining import guardrails
from cellemnet.pretraining.augment import MultiCrop, TwoViews
from cellemnet.pretraining.losses import sinkhorn, swapped_prediction_loss
from cellemnet.pretraining.models import SwAV, all_gather_cat
from cellemnet.pretraining.optim import larc_adapt_gradients_, swav_lr

if TYPE_CHECKING:
    from cellemnet.pretraining.train import Run  # typing only: cellemnet.pretraining.train imports this module


class SwAVMethod:
    name = "swav"

    def __init__(self, cfg: dict[str, Any]):
        self.cfg = cfg
        self.queue: torch.Tensor | None = None
        self.use_the_queue = False

    def transform(self):
        c = self.cfg
        mean, std = Norms.parse(c["norms"]).pair()
        return MultiCrop(c["nmb_crops"], c["size_crops"], c["min_scale_crops"], c["max_scale_crops"], mean, std,
                         c["standardize_views"], c["color_jitter"])

    def health_transform(self):
        c = self.cfg
        mean, std = Norms.parse(c["norms"]).pair()
        return TwoViews(c["size_crops"][0], mean, std, scale=(c["min_scale_crops"][0], c["max_scale_crops"][0]),
                        standardize=c["standardize_views"], color_jitter=c["color_jitter"])

    def build_model(self) -> nn.Module:
        c = self.cfg
        return SwAV(c["arch"], c["hidden_mlp"], c["feat_dim"], c["nmb_prototypes"])

    def build_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        # Weight decay is applied by LARC (folded into the adapted gradient), so the inner SGD has none.
        return torch.optim.SGD(model.parameters(), lr=self.cfg["lr"], momentum=self.cfg["momentum"], weight_decay=0.0)

    def lr(self, epoch: int, step: int, iters_per_epoch: int) -> float:
        c = self.cfg
        return swav_lr(step, iters_per_epoch, c["epochs"], guardrails.effective_lr(c), c["final_lr"],
                       c["warmup_epochs"], c["start_warmup"])

    def queue_rows_per_rank(self, run: "Run") -> int:
        global_batch = run.batch_per_rank * run.info.world_size
        return (self.cfg["queue_length"] - self.cfg["queue_length"] % global_batch) // run.info.world_size

    def start_epoch(self, epoch: int, model: nn.Module, run: "Run") -> None:
        c = self.cfg
        rows = self.queue_rows_per_rank(run)
        if c["queue_length"] > 0 and epoch >= c["epoch_queue_starts"] and self.queue is None and rows > 0:
            self.queue = torch.zeros(len(c["crops_for_assign"]), rows, c["feat_dim"], device=run.device)
        self.use_the_queue = False

    @torch.no_grad()
    def _codes(self, z: torch.Tensor, scores: torch.Tensor, bs: int,
               prototypes: torch.Tensor) -> dict[int, torch.Tensor]:
        c = self.cfg
        codes = {}
        for i, crop_id in enumerate(c["crops_for_assign"]):
            out = scores[bs * crop_id : bs * (crop_id + 1)].detach().float()
            if self.queue is not None:
                if self.use_the_queue or not torch.all(self.queue[i, -1] == 0):
                    self.use_the_queue = True
                    out = torch.cat([self.queue[i] @ prototypes.t().float(), out])
                self.queue[i, bs:] = self.queue[i, :-bs].clone()
                self.queue[i, :bs] = z[crop_id * bs : (crop_id + 1) * bs].float()
            codes[crop_id] = sinkhorn(out, c["epsilon"], c["sinkhorn_iterations"], gather_distributed=True)[-bs:]
        return codes

    def step(self, batch, run: "Run") -> dict[str, float]:
        c = self.cfg
        crops = [runtime.to_device(x, run.device, run.channels_last) for x in batch]
        bs = crops[0].shape[0]
        run.unwrapped.normalize_prototypes()
        with runtime.autocast(run.device, run.amp):
            z, scores = run.model(crops)
            codes = self._codes(z.detach(), scores, bs, run.unwrapped.prototypes.weight)
            loss = swapped_prediction_loss(list(scores.split(bs)), codes, c["temperature"])
        run.optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        if run.global_step < c["freeze_prototypes_niters"]:
            for name, p in run.unwrapped.named_parameters():
                if "prototypes" in name:
                    p.grad = None
        run.scaler.unscale_(run.optimizer)
        larc_adapt_gradients_(run.unwrapped.parameters(), c["weight_decay"], c["trust_coefficient"])
        run.scaler.step(run.optimizer)
        run.scaler.update()
        return {"loss": float(loss.detach())}

    def extra_state(self, run: "Run") -> dict[str, Any]:
        """Every rank's queue, stacked (world, crops, rows, dim) on rank 0 - a collective call."""
        if self.queue is None:
            return {"queue": None}
        return {"queue": all_gather_cat(self.queue[None]).cpu(), "use_the_queue": self.use_the_queue}

    def load_extra_state(self, state: dict[str, Any], run: "Run") -> None:
        queue = state.get("queue")
        if queue is None:
            return
        if queue.shape[0] != run.info.world_size or queue.shape[2] != self.queue_rows_per_rank(run):
            run.say(f"saved SwAV queue is for {queue.shape[0]} processes/other batch; starting a fresh queue")
            return
        self.queue = queue[run.info.rank].to(run.device)
