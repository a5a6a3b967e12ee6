"""Is a pretraining run learning? Label-free evidence on a fixed set of patches, and the end-of-run verdict.

A fixed "health set" (M patches, two augmented views each, drawn once with a fixed seed) is encoded by the
encoder as downstream stages use it (eval mode), at the start of the run and after every `health_every` epochs:

* spread: per-dimension std of the L2-normalised embeddings times sqrt(dim). Uniformly spread embeddings give
  about 1; a collapsed representation (every patch mapped to one point) gives 0.
* effective rank of the trunk features (exp of the entropy of the normalised singular values): how many
  directions the features use.
* pos_sim, neg_sim, sim_gap: mean cosine similarity of two views of one patch, of views of different patches,
  and their difference, in the embedding space the SSL loss shapes.
* retrieval: fraction of view-1 trunk features whose nearest view-2 feature (cosine) is the other view of the same
  patch (chance 1/M). Trunk features are what fine-tuning uses; invariance to the augmentations together with
  patch identity is what instance discrimination is meant to teach.
* conv1_mean_energy: the share of conv1's weight energy in the per-filter mean. At init about 2 %; a stem that
  turned into a brightness detector (seen in runs that did not learn) has most of its energy there.

The verdict compares the last measurement with the run's own initial encoder, not the loss trend: MoCo's loss
rises while the queue fills with real keys, and its top-1 can be high on a near-collapsed embedding.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

HEALTH_FILE = "health.json"

# Verdict thresholds, each with its reason.
COLLAPSED_SPREAD = 0.25  # spread below a quarter of a uniform spread: most dimensions carry nothing
MIN_RETRIEVAL_GAIN = 0.05  # trunk features must find the other view of a patch 5 points more often than at init
MIN_GAP_GAIN = 0.05  # the positive/negative similarity gap must widen
MIN_PROBE_GAIN = 0.0  # with labels: the probe IoU must not fall below the initial encoder's
BRIGHTNESS_STEM = 0.5  # conv1 with half its energy in the filter means reads brightness, not structure


@dataclass
class HealthSet:
    """Two fixed augmented views of M patches, (M, 1, S, S) each."""

    view1: torch.Tensor
    view2: torch.Tensor

    def __len__(self) -> int:
        return int(self.view1.shape[0])


def make_health_set(dataset, transform, n: int, seed: int) -> HealthSet:
    """Draw n patches of `dataset` (a PatchDataset, read()) and two views each with `transform` (TwoViews),
    under a private RNG so the training run's random streams are unchanged."""
    import numpy as np

    n = min(n, len(dataset))
    idx = np.random.default_rng([seed, 7]).choice(len(dataset), size=n, replace=False)
    v1, v2 = [], []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for i in idx:
            patch = torch.from_numpy(np.ascontiguousarray(dataset.read(int(i))))[None]
            a, b = transform(patch)
            v1.append(a)
            v2.append(b)
    return HealthSet(torch.stack(v1), torch.stack(v2))


def trunk_features(resnet: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Global-average-pooled features of a torchvision ResNet, without its fc (whatever fc holds)."""
    x = resnet.maxpool(resnet.relu(resnet.bn1(resnet.conv1(x))))
    for name in ("layer1", "layer2", "layer3", "layer4"):
        x = getattr(resnet, name)(x)
    return torch.flatten(resnet.avgpool(x), 1)


def trunk_and_head(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """(ResNet trunk, projection head) of a MoCo (encoder_q, its fc) or SwAV (encoder, projection_head) model."""
    model = model.module if hasattr(model, "module") else model
    if hasattr(model, "encoder_q"):
        return model.encoder_q, model.encoder_q.fc
    return model.encoder, model.projection_head


def effective_rank(x: torch.Tensor) -> float:
    """exp(entropy) of the normalised singular values of the centred rows of x (Roy & Vetterli 2007)."""
    x = x.double() - x.double().mean(0, keepdim=True)
    s = torch.linalg.svdvals(x)
    if float(s.sum()) == 0.0:
        return 0.0
    p = s / s.sum()
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def embedding_spread(z: torch.Tensor) -> float:
    """Mean per-dimension std of L2-normalised rows z (M, d), times sqrt(d): ~1 when spread, 0 when collapsed."""
    return float(z.double().std(0).mean() * math.sqrt(z.shape[1]))


def pair_statistics(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    """Similarities of paired, L2-normalised rows a[i] ~ b[i] (M, d)."""
    sim = a.double() @ b.double().t()
    m = sim.shape[0]
    pos = float(sim.diagonal().mean())
    neg = float((sim.sum() - sim.diagonal().sum()) / max(m * m - m, 1))
    retrieval = float((sim.argmax(dim=1) == torch.arange(m)).double().mean())
    return {"pos_sim": pos, "neg_sim": neg, "sim_gap": pos - neg, "retrieval": retrieval}


def conv1_mean_energy(weight: torch.Tensor) -> float:
    """Share of conv1's squared weights in the per-filter means (out, in, k, k)."""
    w = weight.detach().double().flatten(1)
    total = float((w * w).sum())
    return float((w.mean(1) ** 2 * w.shape[1]).sum()) / total if total > 0 else 0.0


@torch.no_grad()
def measure(model: nn.Module, health: HealthSet, device: torch.device, batch: int = 64) -> dict[str, float]:
    """Health statistics of `model` (MoCo or SwAV) on the health set, in eval mode; model's mode is restored."""
    trunk, head = trunk_and_head(model)
    was_training = trunk.training, head.training
    trunk.eval()
    head.eval()
    feats, embs = [], []
    try:
        for view in (health.view1, health.view2):
            f_parts, z_parts = [], []
            for start in range(0, len(health), batch):
                x = view[start:start + batch].to(device)
                f = trunk_features(trunk, x).float()
                f_parts.append(f.cpu())
                z_parts.append(F.normalize(head(f), dim=1).float().cpu())
            feats.append(torch.cat(f_parts))
            embs.append(torch.cat(z_parts))
    finally:
        trunk.train(was_training[0])
        head.train(was_training[1])
    f1, f2 = (F.normalize(f, dim=1) for f in feats)
    emb = pair_statistics(embs[0], embs[1])
    out = {
        "spread": embedding_spread(embs[0]),
        "feature_rank": effective_rank(feats[0]),
        "pos_sim": emb["pos_sim"], "neg_sim": emb["neg_sim"], "sim_gap": emb["sim_gap"],
        "retrieval": pair_statistics(f1, f2)["retrieval"],
        "conv1_mean_energy": conv1_mean_energy(trunk.conv1.weight),
        "finite": bool(all(torch.isfinite(t).all() for t in (*feats, *embs))),
    }
    return out


def loss_chance_level(method: str, cfg: dict[str, Any]) -> float:
    """The loss of an encoder that cannot tell positives from negatives.

    MoCo: uniform over 1 + K logits -> ln(K + 1). SwAV: predicting the uniform distribution over the prototypes
    -> cross-entropy ln(nmb_prototypes) against any code."""
    if method == "mocov2":
        return math.log(cfg["moco_k"] + 1)
    return math.log(cfg["nmb_prototypes"])


def verdict(initial: dict[str, float], final: dict[str, float], *, nonfinite_step: int | None = None,
            probe_initial: float | None = None, probe_final: float | None = None) -> tuple[bool, str]:
    """(learned, reason) from the first and last health measurements (and probe IoUs when labels exist)."""
    if nonfinite_step is not None or not final.get("finite", True):
        where = f" at step {nonfinite_step}" if nonfinite_step is not None else ""
        return False, f"the loss or the features became non-finite{where} (lr too high?)"
    if final["spread"] < COLLAPSED_SPREAD:
        return False, (f"representation collapsed: embedding spread {final['spread']:.3f} "
                       f"(uniform ~1, initial encoder {initial['spread']:.3f})")
    if final["conv1_mean_energy"] > BRIGHTNESS_STEM and initial["conv1_mean_energy"] < BRIGHTNESS_STEM:
        return False, (f"conv1 became a brightness detector: {final['conv1_mean_energy']:.0%} of its energy in the "
                       f"filter means (initial {initial['conv1_mean_energy']:.0%})")
    gap_gain = final["sim_gap"] - initial["sim_gap"]
    retrieval_gain = final["retrieval"] - initial["retrieval"]
    if gap_gain < MIN_GAP_GAIN:
        return False, (f"views of one patch are not closer than views of different patches: similarity gap "
                       f"{final['sim_gap']:.3f} vs {initial['sim_gap']:.3f} for the initial encoder")
    if retrieval_gain < MIN_RETRIEVAL_GAIN:
        return False, (f"trunk features find the other view of a patch no better than the initial encoder: "
                       f"retrieval {final['retrieval']:.1%} vs {initial['retrieval']:.1%}")
    if probe_initial is not None and probe_final is not None and probe_final - probe_initial < MIN_PROBE_GAIN:
        return False, (f"the probe IoU fell from {probe_initial:.3f} (initial encoder) to {probe_final:.3f}")
    evidence = (f"retrieval {initial['retrieval']:.1%} -> {final['retrieval']:.1%}, similarity gap "
                f"{initial['sim_gap']:.3f} -> {final['sim_gap']:.3f}, spread {final['spread']:.2f}")
    if probe_initial is not None and probe_final is not None:
        evidence += f", probe IoU {probe_initial:.3f} -> {probe_final:.3f}"
    return True, evidence


def verdict_line(learned: bool, reason: str) -> str:
    return f"verdict: learned ({reason})" if learned else f"verdict: did not learn: {reason}"


def summarise(records: Sequence[dict[str, Any]]) -> str:
    """One console line for a health record."""
    r = records[-1]
    return (f"health: spread {r['spread']:.3f}, feature rank {r['feature_rank']:.1f}, similarity gap "
            f"{r['sim_gap']:.3f} (pos {r['pos_sim']:.3f} / neg {r['neg_sim']:.3f}), retrieval {r['retrieval']:.1%}, "
            f"conv1 mean energy {r['conv1_mean_energy']:.0%}")


class HealthMonitor:
    """Measures health at the start, every `health_every` epochs and at the end; keeps the records a checkpoint
    carries; prints, logs (MLflow + metrics.jsonl through `log`) and gives the verdict.

    `probe` (optional) maps the trunk to a probe IoU on labeled data; it runs at the start, every `probe_every`
    epochs and at the end. Only the main process measures (the others keep empty records)."""

    def __init__(self, cfg: dict[str, Any], method: str, health_set: HealthSet | None, device: torch.device,
                 log, say, probe=None):
        self.cfg, self.method, self.health_set, self.device = cfg, method, health_set, device
        self.log, self.say, self.probe = log, say, probe
        self.records: list[dict[str, Any]] = []
        self.nonfinite_step: int | None = None
        self.result: dict[str, Any] | None = None

    @property
    def active(self) -> bool:
        return self.health_set is not None

    def load(self, saved: dict[str, Any] | None) -> None:
        if saved:
            self.records = list(saved.get("records", []))
            self.nonfinite_step = saved.get("nonfinite_step")

    def state(self) -> dict[str, Any]:
        return {"records": self.records, "nonfinite_step": self.nonfinite_step, "verdict": self.result}

    def _probe_due(self, epoch: int, final: bool) -> bool:
        every = self.cfg.get("probe_every", 0)
        return self.probe is not None and (final or epoch == 0 or (every and epoch % every == 0))

    def record(self, model: nn.Module, epoch: int, step: int, final: bool = False) -> dict[str, Any]:
        rec: dict[str, Any] = {"epoch": epoch, "step": step, **measure(model, self.health_set, self.device)}
        if self._probe_due(epoch, final):
            rec["probe_iou"] = float(self.probe(trunk_and_head(model)[0]))
        self.records.append(rec)
        self.log({f"health_{k}": float(v) for k, v in rec.items() if k not in ("epoch", "step")}, step,
                 {"kind": "health", **rec})
        self.say(f"epoch {epoch}: " + summarise(self.records) +
                 (f", probe IoU {rec['probe_iou']:.3f}" if "probe_iou" in rec else ""))
        return rec

    def start(self, model: nn.Module) -> None:
        if self.active and not self.records:
            self.record(model, 0, 0)

    def epoch_end(self, model: nn.Module, epoch: int, step: int, last: bool) -> None:
        every = self.cfg.get("health_every", 1)
        if self.active and (last or (every and epoch % every == 0)):
            self.record(model, epoch, step, final=last)
            self.judge()

    def judge(self) -> dict[str, Any] | None:
        """The verdict from the first and the latest record (None before two records exist)."""
        if not self.active or not self.records:
            return None
        first, last = self.records[0], self.records[-1]
        if len(self.records) < 2 and self.nonfinite_step is None:
            return None
        probes = [r["probe_iou"] for r in self.records if "probe_iou" in r]
        learned, reason = verdict(first, last, nonfinite_step=self.nonfinite_step,
                                  probe_initial=probes[0] if len(probes) > 1 else None,
                                  probe_final=probes[-1] if len(probes) > 1 else None)
        self.result = {"learned": learned, "reason": reason, "epoch": last["epoch"], "step": last["step"]}
        return self.result

    def finish(self, model: nn.Module, epoch: int, step: int) -> dict[str, Any] | None:
        """Measure at the end (unless the last epoch just did), judge, and print the verdict line loudly."""
        if not self.active:
            return None
        if not self.records or self.records[-1]["step"] != step:
            self.record(model, epoch, step, final=True)
        result = self.judge()
        if result is not None:
            line = verdict_line(result["learned"], result["reason"])
            if not result["learned"]:
                bar = "!" * min(len(line), 100)
                self.say(f"{bar}\n{line}\n{bar}")
            else:
                self.say(line)
        return result


def checkpoint_verdict(ckpt: dict[str, Any]) -> dict[str, Any] | None:
    """The verdict a pretraining checkpoint carries ({learned, reason, epoch, step}), or None (published files,
    exported encoders, checkpoints written before the first health measurement)."""
    saved = ckpt.get("health")
    return saved.get("verdict") if isinstance(saved, dict) else None


def refusal(ckpt: dict[str, Any], source: str) -> str | None:
    """Why an encoder must not be exported from this checkpoint without --force (None when it may be)."""
    v = checkpoint_verdict(ckpt)
    if v is None or v.get("learned", True):
        return None
    return (f"{source}: its pretraining run did not learn ({v['reason']}); fine-tuning from it is expected to be "
            f"worse than random init. Fix the recipe (see pretraining/README.md, 'Does it learn?') or pass --force")
