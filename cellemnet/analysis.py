"""What an encoder responds to: feature maps against masks, invariance curves and occlusion sensitivity.

These are the reusable pieces behind the analysis notebooks in notebooks/. Images are 2D arrays: uint8 (0..255) or
float already scaled to 0..1. Importing this module does not import torch; the functions that need it import it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

if TYPE_CHECKING:  # torch is imported where it is used: importing this module stays light
    import torch

from cellemnet.constants import EM_NORMS
from cellemnet.encoder import encoder_from_checkpoint, load_checkpoint_file, load_encoder_into_resnet
from cellemnet.errors import InputError

RESNET_STAGES = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")


# --------------------------------------------------------------------------------------------- encoders and inputs
def resnet50_encoder(in_channels: int = 1, seed: int | None = 0):
    """A torchvision ResNet-50 with `in_channels` input channels and no classifier (fc is Identity), in eval mode.

    Random initialisation (seeded when `seed` is not None); load weights into it with `load_state_dict`.
    """
    import torch
    from torchvision.models import resnet50

    if seed is not None:
        torch.manual_seed(seed)
    model = resnet50(weights=None)
    if in_channels != 3:
        model.conv1 = torch.nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    model.fc = torch.nn.Identity()
    return model.eval()


def load_encoder(path: str | Path | None = None, seed: int = 0):
    """(encoder, norms, description) from a checkpoint file, or a seeded random-init ResNet-50 when path is None.

    The file may be an exported encoder (`cellemnet.encoder`), a MoCoV2/SwAV training checkpoint of this
    project, or a published CEM500K/CEM1.5M file: anything `encoder_from_checkpoint` reads. Random init uses the EM
    norms and one channel.
    """
    if path is None:
        return resnet50_encoder(1, seed), [EM_NORMS["mean"][0], EM_NORMS["std"][0]], "random-init ResNet-50"
    try:
        exported = encoder_from_checkpoint(load_checkpoint_file(path))
    except InputError as exc:
        message = str(exc)
        raise InputError(message if str(path) in message else f"{path}: {message}") from None
    model = load_encoder_into_resnet(exported)
    return model.eval(), list(exported["norms"]), f"{exported['method']} ResNet-50 from {Path(path).name}"


def to_unit(image: np.ndarray) -> np.ndarray:
    """float32 copy scaled to 0..1 (uint8 is divided by 255; floats are assumed to be 0..1 already)."""
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    return image.astype(np.float32)


def to_batch(images: Sequence[np.ndarray] | np.ndarray, norms: Sequence) -> "torch.Tensor":
    """Stack same-shaped 2D images into a normalised (N, C, H, W) float tensor; C is 1, or 3 for 3-value norms."""
    import torch

    mean = np.atleast_1d(np.asarray(norms[0], dtype=np.float32))
    std = np.atleast_1d(np.asarray(norms[1], dtype=np.float32))
    stack = np.stack([to_unit(im) for im in images])[:, None]  # (N, 1, H, W)
    stack = np.repeat(stack, mean.size, axis=1)
    stack = (stack - mean[None, :, None, None]) / std[None, :, None, None]
    return torch.from_numpy(np.ascontiguousarray(stack, dtype=np.float32))


def set_output_stride(model, output_stride: int):
    """Make a torchvision ResNet's layer4 output `output_stride` (32, 16, 8 or 4) times smaller than its input.

    Finer maps line up better with small structures. The stride-2 convolutions of the first block of layer4, layer3
    and layer2 are set to stride 1 in turn; weights are unchanged. Changes the model in place and returns it.
    """
    layers_to_unstride = {32: [], 16: ["layer4"], 8: ["layer4", "layer3"], 4: ["layer4", "layer3", "layer2"]}
    if output_stride not in layers_to_unstride:
        raise ValueError(f"output_stride must be one of {sorted(layers_to_unstride)}, got {output_stride}")
    for name in ("layer2", "layer3", "layer4"):
        stride = 1 if name in layers_to_unstride[output_stride] else 2
        block = getattr(model, name)[0]
        block.conv2.stride = (stride, stride)
        if block.downsample is not None:
            block.downsample[0].stride = (stride, stride)
    return model


def forward_to(model, batch, layer: str = "layer4"):
    """Run a torchvision ResNet up to and including `layer` (one of RESNET_STAGES); returns (N, C, h, w)."""
    if layer not in RESNET_STAGES:
        raise ValueError(f"layer must be one of {RESNET_STAGES}, got {layer!r}")
    x = batch
    for name in RESNET_STAGES:
        x = getattr(model, name)(x)
        if name == layer:
            return x
    raise AssertionError("unreachable")


def feature_maps(model, image: np.ndarray, norms: Sequence, layer: str = "layer4",
                 size: tuple[int, int] | None = None) -> np.ndarray:
    """(C, H, W) float32 responses of `layer` to one image, upsampled bilinearly to `size` (default: the image's)."""
    import torch
    import torch.nn.functional as F

    size = tuple(np.asarray(image).shape[:2]) if size is None else tuple(size)
    with torch.inference_mode():
        maps = forward_to(model, to_batch([image], norms), layer)
        maps = F.interpolate(maps, size=size, mode="bilinear", align_corners=False)
    return maps[0].numpy()


def embed(model, images: Sequence[np.ndarray], norms: Sequence, batch_size: int = 16) -> np.ndarray:
    """(N, D) global-average-pooled encoder outputs. Images may differ in size (they are run one size group at a
    time)."""
    import torch

    out: list[np.ndarray | None] = [None] * len(images)
    by_shape: dict[tuple, list[int]] = {}
    for i, im in enumerate(images):
        by_shape.setdefault(np.asarray(im).shape, []).append(i)
    with torch.inference_mode():
        for indices in by_shape.values():
            for start in range(0, len(indices), batch_size):
                chunk = indices[start:start + batch_size]
                feats = model(to_batch([images[i] for i in chunk], norms)).flatten(1).numpy()
                for i, f in zip(chunk, feats):
                    out[i] = f
    return np.stack(out).astype(np.float32)


# ----------------------------------------------------------------------------------------- feature maps vs masks
def point_biserial(features: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Point-biserial correlation of each channel of `features` (C, H, W) with a binary mask (H, W); shape (C,).

    That is the Pearson correlation with the 0/1 mask. A channel (or mask) with no variance gets 0.
    """
    x = features.reshape(features.shape[0], -1).astype(np.float32)
    y = np.asarray(mask, dtype=bool).reshape(-1).astype(np.float32)
    x = x - x.mean(axis=1, keepdims=True)
    y = y - y.mean()
    denom = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64) * float(y @ y))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (x @ y).astype(np.float64) / denom
    return np.where(denom > 1e-12, r, 0.0).astype(np.float32)


def rescale01(array: np.ndarray) -> np.ndarray:
    """Min-max rescale to 0..1 (a constant array becomes zeros)."""
    array = np.asarray(array, dtype=np.float32)
    span = float(array.max() - array.min())
    return (array - array.min()) / span if span > 0 else np.zeros_like(array)


def top_filters_map(features: np.ndarray, correlations: np.ndarray, k: int = 32) -> np.ndarray:
    """Mean of the k channels most positively correlated with the mask, rescaled to 0..1; shape (H, W)."""
    top = np.argsort(correlations)[::-1][:k]
    return rescale01(features[top].mean(axis=0))


def binary_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean arrays; two empty arrays agree perfectly (1.0)."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


@dataclass(frozen=True)
class MaskAgreement:
    """How well an encoder's best filters outline a mask."""
    response: np.ndarray  # (H, W) 0..1 mean of the top-k filters
    correlations: np.ndarray  # (C,) point-biserial r of every filter
    r_pb: float  # correlation of `response` with the mask
    iou: float  # IoU of response >= threshold with the mask


def mask_agreement(model, image: np.ndarray, mask: np.ndarray, norms: Sequence, k: int = 32,
                   threshold: float = 0.3, layer: str = "layer4", max_side: int = 112) -> MaskAgreement:
    """Correlate every filter of `layer` with `mask`, average the top k and score that map against the mask.

    Filters are ranked on maps upsampled to at most `max_side` pixels (2048 full-size maps would take ~0.4 GB per
    224 px image); the top-k map itself is built and scored at the image's full size.
    """
    import torch
    import torch.nn.functional as F
    from skimage.transform import resize

    mask = np.asarray(mask).astype(bool)
    shape = np.asarray(image).shape[:2]
    factor = min(1.0, max_side / max(shape))
    work_shape = tuple(max(1, int(round(n * factor))) for n in shape)
    with torch.inference_mode():
        raw = forward_to(model, to_batch([image], norms), layer)
        work_maps = F.interpolate(raw, size=work_shape, mode="bilinear", align_corners=False)[0].numpy()
        work_mask = resize(mask.astype(np.float32), work_shape, order=1, anti_aliasing=True) >= 0.5
        r = point_biserial(work_maps, work_mask)
        top = np.argsort(r)[::-1][:k]
        full = F.interpolate(raw[:, torch.from_numpy(top.copy())], size=tuple(shape), mode="bilinear",
                             align_corners=False)[0].numpy()
    response = rescale01(full.mean(axis=0))
    return MaskAgreement(response=response, correlations=r, r_pb=float(point_biserial(response[None], mask)[0]),
                         iou=binary_iou(response >= threshold, mask))


# ------------------------------------------------------------------------------------------------ invariances
def _rotate(image, degrees, rng):
    from scipy.ndimage import rotate
    return rotate(image, float(degrees), reshape=False, order=1, mode="reflect")


def _blur(image, sigma, rng):
    from scipy.ndimage import gaussian_filter
    return gaussian_filter(image, float(sigma)) if sigma > 0 else image


def _noise(image, std, rng):
    return np.clip(image + rng.normal(0.0, float(std), image.shape), 0, 1) if std > 0 else image


def _brightness(image, factor, rng):
    return np.clip(image + (float(factor) - 1.0), 0, 1)


def _contrast(image, factor, rng):
    return np.clip((image - image.mean()) * float(factor) + image.mean(), 0, 1)


def _scale(image, factor, rng):
    from skimage.transform import rescale
    return rescale(image, float(factor), order=1, anti_aliasing=factor < 1, preserve_range=True)


@dataclass(frozen=True)
class Perturbation:
    """One swept image change: apply(image 0..1 float, strength, rng) -> image; `reference` leaves it unchanged."""
    name: str
    apply: Callable[[np.ndarray, float, np.random.Generator], np.ndarray]
    strengths: tuple[float, ...]
    reference: float
    unit: str


# Few strengths per sweep keep a CPU run short; pass your own `strengths` for finer curves.
PERTURBATIONS = {
    p.name: p for p in (
        Perturbation("rotation", _rotate, (0.0, 30.0, 60.0, 90.0, 135.0, 180.0), 0.0, "degrees"),
        Perturbation("blur", _blur, (0.0, 1.0, 2.0, 4.0), 0.0, "Gaussian sigma (px)"),
        Perturbation("noise", _noise, (0.0, 0.05, 0.1, 0.2), 0.0, "Gaussian noise std (0..1 scale)"),
        Perturbation("brightness", _brightness, (0.5, 0.75, 1.0, 1.25, 1.5), 1.0, "1 + intensity offset"),
        Perturbation("contrast", _contrast, (0.25, 0.5, 1.0, 1.5, 2.0), 1.0, "contrast factor"),
        Perturbation("scale", _scale, (0.5, 0.75, 1.0, 1.5), 1.0, "resize factor"),
    )
}


def perturbed_responses(model, images: Sequence[np.ndarray], norms: Sequence, perturbation: Perturbation,
                        strengths: Sequence[float] | None = None, seed: int = 0) -> np.ndarray:
    """(S, N, D) pooled encoder responses to every image at every strength of `perturbation`."""
    strengths = perturbation.strengths if strengths is None else strengths
    rng = np.random.default_rng(seed)
    images = [to_unit(im) for im in images]
    return np.stack([embed(model, [perturbation.apply(im, s, rng) for im in images], norms) for s in strengths])


def cosine_to_reference(responses: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Cosine similarity of (S, N, D) responses with the (N, D) reference responses of the same images; (S, N).

    Each unit's mean reference response over the images is subtracted first: what all images share (large for an
    untrained network, and always positive after ReLU) would otherwise push every cosine towards 1. What remains is
    the image-specific part of the response, so 1 means "this image still looks like itself to the encoder".
    """
    common = reference.mean(axis=0)
    r, ref = responses - common, (reference - common)[None]
    denom = np.linalg.norm(r, axis=-1) * np.linalg.norm(ref, axis=-1)
    return np.where(denom > 0, (r * ref).sum(-1) / np.maximum(denom, 1e-12), 0.0)


def firing_thresholds(model, norms: Sequence, size: int = 128, n: int = 32, percentile: float = 99.0,
                      seed: int = 0) -> np.ndarray:
    """Per-unit response threshold: the `percentile` of each unit's responses to n uniform-noise images; (D,)."""
    rng = np.random.default_rng(seed)
    noise = [rng.random((size, size), dtype=np.float32) for _ in range(n)]
    return np.percentile(embed(model, noise, norms), percentile, axis=0)


def mean_firing_rate(reference: np.ndarray, responses: np.ndarray, thresholds: np.ndarray,
                     near_max_percentile: float = 90.0) -> np.ndarray:
    """Mean firing rate per strength, (S,), NaN when no unit qualifies.

    reference: (N, D) responses at the reference strength; responses: (S, N, D). A unit takes part when its
    near-maximal reference response (the `near_max_percentile` over images) exceeds its threshold; its rate at a
    strength is the fraction of its near-maximal images whose response there is still above threshold.
    """
    near_max = np.percentile(reference, near_max_percentile, axis=0)  # (D,)
    units = np.flatnonzero(near_max > thresholds)
    if units.size == 0:
        return np.full(responses.shape[0], np.nan)
    rates = []
    for u in units:
        chosen = reference[:, u] >= near_max[u]
        rates.append((responses[:, chosen, u] > thresholds[u]).mean(axis=1))
    return np.mean(rates, axis=0)


# ------------------------------------------------------------------------------------------------- occlusion
def occlusion_map(score: Callable[["torch.Tensor"], "torch.Tensor"], batch: "torch.Tensor", window: int = 31,
                  stride: int = 15, baseline: float = 0.0, chunk: int = 16) -> np.ndarray:
    """(H, W) mean drop of `score` when a window x window square covering each pixel is set to `baseline`.

    batch is one prepared input (1, C, H, W); score maps (B, C, H, W) -> (B,). Pixels that no window covers get 0.
    Positive values mark regions the score depends on.
    """
    import torch

    _, _, h, w = batch.shape
    starts_y = list(range(0, max(h - window, 0) + 1, stride))
    starts_x = list(range(0, max(w - window, 0) + 1, stride))
    boxes = [(y, x) for y in starts_y for x in starts_x]
    drop_sum = np.zeros((h, w), dtype=np.float64)
    count = np.zeros((h, w), dtype=np.float64)
    with torch.inference_mode():
        base_score = float(score(batch)[0])
        for start in range(0, len(boxes), chunk):
            part = boxes[start:start + chunk]
            occluded = batch.repeat(len(part), 1, 1, 1)
            for i, (y, x) in enumerate(part):
                occluded[i, :, y:y + window, x:x + window] = baseline
            scores = score(occluded).double().numpy()
            for (y, x), s in zip(part, scores):
                drop_sum[y:y + window, x:x + window] += base_score - s
                count[y:y + window, x:x + window] += 1
    return np.divide(drop_sum, count, out=np.zeros_like(drop_sum), where=count > 0).astype(np.float32)


def embedding_similarity(model, key: np.ndarray, norms: Sequence) -> Callable:
    """A score for `occlusion_map`: cosine similarity of a batch's embeddings with the embedding of `key`."""
    import torch
    import torch.nn.functional as F

    with torch.inference_mode():
        key_embedding = model(to_batch([key], norms)).flatten(1)

    def score(batch):
        return F.cosine_similarity(model(batch).flatten(1), key_embedding, dim=1)
    return score


def random_views(image: np.ndarray, size: int, n: int = 2, scale: tuple[float, float] = (0.5, 1.0),
                 seed: int = 0) -> list[np.ndarray]:
    """n random resized crops (with random flips) of one image, each size x size, same dtype as the input."""
    import albumentations as A

    augment = A.Compose([A.RandomResizedCrop(size=(size, size), scale=scale), A.HorizontalFlip(p=0.5),
                         A.VerticalFlip(p=0.5)], seed=seed)
    return [augment(image=np.asarray(image))["image"] for _ in range(n)]
