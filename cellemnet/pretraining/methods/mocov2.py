"""MoCoV2 (He et al. 2020; Chen et al. 2020): a query encoder, an EMA key encoder and a queue of negatives."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from cellemnet import runtime
from cellemnet.encoder import Norms
from cellemnet.pretraining import guardrails
from cellemnet.pretraining.augment import TwoViews
from cellemnet.pretraining.losses import infonce_loss, topk_accuracy
from cellemnet.pretraining.models import MoCo
from cellemnet.pretraining.optim import mocov2_lr

if TYPE_CHECKING:
    from cellemnet.pretraining.train import Run  # typing only: cellemnet.pretraining.train imports this module


class MoCoV2Method:
    name = "mocov2"

    def __init__(self, cfg: dict[str, Any]):
        self.cfg = cfg

    def transform(self):
        mean, std = Norms.parse(self.cfg["norms"]).pair()
        return TwoViews(self.cfg["crop_size"], mean, std, scale=tuple(self.cfg["crop_scale"]),
                        standardize=self.cfg["standardize_views"], color_jitter=self.cfg["color_jitter"])

    def health_transform(self):
        return self.transform()

    def build_model(self) -> nn.Module:
        c = self.cfg
        return MoCo(c["arch"], c["moco_dim"], c["moco_k"], c["moco_m"], c["moco_t"], c["mlp"], c["mlp_bn"],
                    c["bn_splits"])

    def build_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        params = [p for p in model.parameters() if p.requires_grad]
        return torch.optim.SGD(params, lr=self.cfg["lr"], momentum=self.cfg["momentum"],
                               weight_decay=self.cfg["weight_decay"])

    def lr(self, epoch: int, step: int, iters_per_epoch: int) -> float:
        c = self.cfg
        lr = mocov2_lr(guardrails.effective_lr(c), epoch, c["epochs"], c["schedule"], c["cos"])
        warmup = c["warmup_epochs"] * iters_per_epoch
        return lr * min(1.0, (step + 1) / warmup) if warmup else lr

    def start_epoch(self, epoch: int, model: nn.Module, run: "Run") -> None:
        pass

    def step(self, batch, run: "Run") -> dict[str, float]:
        c = self.cfg
        im_q, im_k = (runtime.to_device(x, run.device, run.channels_last) for x in batch)
        run.unwrapped.momentum = guardrails.moco_momentum(c["moco_m"], run.global_step, run.total_steps,
                                                          c["moco_m_schedule"])
        # Until the queue holds only real keys, top-k compares against random vectors: not evidence of anything.
        queue_full = run.global_step * c["batch_size"] >= c["moco_k"]
        with runtime.autocast(run.device, run.amp):
            logits, keys = run.model(im_q, im_k)
            loss = infonce_loss(logits)
        run.optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        run.scaler.step(run.optimizer)
        run.scaler.update()
        run.unwrapped.dequeue_and_enqueue(keys)
        out = {"loss": float(loss.detach()), "moco_m": run.unwrapped.momentum}
        if queue_full:
            target = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
            out["top1"], out["top5"] = topk_accuracy(logits.detach(), target)
        return out

    def extra_state(self, run: "Run") -> dict[str, Any]:
        return {}  # the queue and its pointer are buffers of the model's state_dict

    def load_extra_state(self, state: dict[str, Any], run: "Run") -> None:
        pass
