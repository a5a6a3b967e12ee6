"""Encoder-quality probe: how much a FROZEN encoder's own features tell about a labeled EM benchmark.

A U-Net decoder hides encoder quality (with skip connections a frozen random encoder still reaches 0.64 IoU
on real EM), so the probe has no spatial decoder: one per-pixel logistic regression on the encoder's
multi-scale features, scored against the test masks, next to the same probe on frozen RANDOM encoders of the
same architecture (same pixels, same seeds). The difference is what the encoder's training added.

Method, per seed:

1. Sample `pixels_per_image` training pixels per train image (class-balanced: half foreground, half
   background where the image has both; at most `max_train_pixels` in all), from `numpy.random.default_rng(seed)`.
2. Features of a pixel: the chosen layers (`conv1` stride 2, `layer1` 4, `layer2` 8, `layer3` 16, `layer4` 32)
   bilinearly upsampled to full resolution and concatenated. Images are used at native scale: reflect-padded
   to a multiple of 32, cropped back; images larger than `tile_size` go in overlapping tiles, each answering
   for its central part, so memory stays bounded.
3. Features standardised on the sampled train pixels, scikit-learn `LogisticRegression` (L2, `C`), fitted.
4. Dense prediction on every test image, probability > 0.5 -> foreground; IoU of the foreground class per
   test image (cellemnet.evaluation.metrics, empty-vs-empty = 1), averaged over the test images.
5. The random baseline: `random_trunk(arch, in_channels, seed)` (the pretraining stage's initialisation,
   built under its own RNG so a caller's RNG state is untouched), scored the same way on the same pixels.

The probe is linear, and bilinear upsampling and standardisation are affine maps whose weights sum to one,
so the full-resolution logit map is computed exactly as the sum of each layer's 1x1 logit map upsampled
(cheap), and training features are read at the sampled pixels with `grid_sample` (the same interpolation).
Training pixels come only from train images, scoring only from test images.

API (all arguments explicit; torch and scikit-learn are imported by this module):

    data = load_probe_data(data_dir, test_dir=None, foreground_class=None,
                           max_train_images=None, max_test_images=None) -> ProbeData
        Reads `data_dir/train/{images,masks}` and the test folder (`test_dir`, else `data_dir/test`, else
        `data_dir/test2d` as cellemnet.synthetic.make_benchmark writes) once: uint8 images, 0/1 masks
        (any non-zero label is foreground, or only `foreground_class`). Reuse it across calls: it also caches
        the random-baseline scores, so repeated calls pay for the encoder only.

    settings = ProbeSettings(layers=("layer1", "layer2", "layer3"), seeds=(0, 1, 2), pixels_per_image=2000,
                             max_train_pixels=20000, C=0.1, batch=4, tile_size=1024, tile_overlap=128, amp=True)

    result = probe_trunk(trunk, arch, data, norms, settings=ProbeSettings(), progress=False) -> ProbeResult
        The ONLINE entry point (e.g. every N epochs of pretraining): `trunk` is a torchvision ResNet as
        cellemnet.encoder.one_channel_resnet builds it (1-channel conv1; attributes conv1, bn1, relu,
        maxpool, layer1..layer4; fc is never called), e.g. `model.encoder_q` of MoCo (unwrap DDP's `.module`),
        or an smp ResNetEncoder (same names). It is used in place, in eval mode, on its own device, and put back
        in the train/eval mode it had; the caller's RNG state is not changed. `norms` is {"mean": [m],
        "std": [s]} (the pretraining config's norms), `arch` e.g. "resnet50" (for the random baseline).

    result = probe_encoder(encoder, data, arch=None, norms=EM_NORMS, settings=ProbeSettings(), device="auto",
                           progress=True) -> ProbeResult
        Anything the evaluation stage's `pretraining` key accepts (random_init, imagenet_supervised,
        cellemnet_mocov2, cellemnet_swav, a weights/checkpoint path), resolved with
        cellemnet.evaluation.weights.resolve_pretraining and built as the U-Net's smp encoder. arch: given, else
        the weights' `arch` attribute when they carry one, else resnet50. A random_init encoder is built once
        under seed ENCODER_INIT_SEED (2**31 - 1, apart from the usual baseline seeds).

    check_trunk_arch(trunk, arch)   # ConfigError when the trunk is not that architecture (probe_trunk calls it)

    ProbeResult: seeds, encoder_iou, random_iou (lists per seed), difference (paired), encoder_mean,
        random_mean, difference_mean, *_sd (sample sd, 0 for one seed), per-image IoUs, seconds, as_dict(),
        and the predictions of the first test image (seed seeds[0]) for the figure.

    The script (evaluation/probe_encoder.py ENCODER DATA_DIR [key=value ...]):
    cfg = load_probe_config(["seeds=[0,1]", ...])          # PROBE_SCHEMA; unknown key -> ConfigError
    result = run_probe(encoder, data_dir, cfg, progress=True)  # writes out/result.json (+ out/probe.png)
    report_lines(result) -> list[str]                       # table; the last line is `Probe_IoU: ...`
"""
from __future__ import annotations

import dataclasses
import json
import time
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from cellemnet.config import Field, load_config
from cellemnet.constants import EM_NORMS
from cellemnet.encoder import Norms, one_channel_resnet
from cellemnet.errors import ConfigError, InputError
from cellemnet.evaluation.config import _check_norms
from cellemnet.evaluation.data import find_pairs, read_gray8
from cellemnet.evaluation.metrics import ious, mean_of
from cellemnet.evaluation.model import build_unet
from cellemnet.evaluation.predict import overlapping_tile_starts
from cellemnet.evaluation.weights import PUBLISHED, resolve_pretraining
from cellemnet.io import atomic_path, atomic_write_text, read_image
from cellemnet.runtime import autocast, select_device

LAYERS = ("conv1", "layer1", "layer2", "layer3", "layer4")
LAYER_STRIDES = {"conv1": 2, "layer1": 4, "layer2": 8, "layer3": 16, "layer4": 32}
DEFAULT_LAYERS = ("layer1", "layer2", "layer3")
ARCHS = ("resnet18", "resnet34", "resnet50")
# (residual block class, blocks in layer1..layer4): how a trunk shows which of ARCHS it is
ARCH_BLOCKS = {"resnet18": ("BasicBlock", (2, 2, 2, 2)), "resnet34": ("BasicBlock", (3, 4, 6, 3)),
               "resnet50": ("Bottleneck", (3, 4, 6, 3))}
DIVISOR = 32  # the deepest layer has stride 32
ENCODER_INIT_SEED = 2**31 - 1  # the random_init ENCODER's seed, apart from the baseline seeds
STD_FLOOR = 1e-6  # features constant on the train pixels (dead ReLUs) are left unscaled


# ============================================================================================== data
@dataclasses.dataclass(frozen=True)
class ProbeImage:
    name: str
    image: np.ndarray  # (H, W) uint8
    mask: np.ndarray  # (H, W) uint8, 1 = foreground


@dataclasses.dataclass
class ProbeData:
    """Labeled train and test images, loaded once; also caches random-baseline scores across calls."""

    data_dir: str
    test_dir: str
    train: list[ProbeImage]
    test: list[ProbeImage]
    baseline_cache: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)


def resolve_test_dir(data_dir: str | Path, test_dir: str | Path | None = None) -> Path:
    """`test_dir` as given (relative to data_dir when that exists), else data_dir/test, else data_dir/test2d."""
    data_dir = Path(data_dir)
    if test_dir is not None:
        candidate = Path(test_dir)
        if not candidate.is_absolute() and (data_dir / candidate).is_dir():
            candidate = data_dir / candidate
        if not candidate.is_dir():
            raise InputError(f"{candidate}: test folder not found")
        return candidate
    for name in ("test", "test2d"):
        if (data_dir / name).is_dir():
            return data_dir / name
    raise InputError(f"{data_dir}: no 'test' or 'test2d' folder (or set test_dir=...)")


def foreground_of(mask: np.ndarray, foreground_class: int | None) -> np.ndarray:
    """0/1 uint8: any non-zero label (0/1 and 0/255 masks), or only `foreground_class` in a label image."""
    mask = np.asarray(mask)
    return ((mask > 0) if foreground_class is None else (mask == foreground_class)).astype(np.uint8)


def load_split(folder: str | Path, foreground_class: int | None = None, max_images: int | None = None
               ) -> list[ProbeImage]:
    """The images and masks of one folder (`images/`, `masks/`, paired by name as for fine-tuning)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: folder not found")
    if (folder / "images").is_dir() and not (folder / "masks").is_dir():
        raise InputError(f"{folder}: no 'masks' folder (the probe needs masks for training and scoring)")
    pairs = find_pairs(folder, require_masks=True)[:max_images]
    out = []
    for pair in pairs:
        image = read_gray8(pair.image)
        if image.ndim != 2:
            raise InputError(f"{pair.image}: the probe takes 2D images, got shape {image.shape}")
        mask = foreground_of(read_image(pair.mask), foreground_class)
        if mask.shape != image.shape:
            raise InputError(f"{pair.mask}: mask shape {mask.shape} != image shape {image.shape}")
        out.append(ProbeImage(pair.name, image, mask))
    return out


def load_probe_data(data_dir: str | Path, test_dir: str | Path | None = None, foreground_class: int | None = None,
                    max_train_images: int | None = None, max_test_images: int | None = None) -> ProbeData:
    """Read a labeled benchmark once (see the module docstring for the layout)."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise InputError(f"{data_dir}: data folder not found")
    train_dir = data_dir / "train"
    if not train_dir.is_dir():
        raise InputError(f"{data_dir}: no 'train' folder (train/images and train/masks)")
    test_folder = resolve_test_dir(data_dir, test_dir)
    train = load_split(train_dir, foreground_class, max_train_images)
    if not any(item.mask.any() for item in train):
        raise InputError(f"{train_dir / 'masks'}: no foreground pixels in any train mask")
    if all(item.mask.all() for item in train):
        raise InputError(f"{train_dir / 'masks'}: no background pixels in any train mask")
    test = load_split(test_folder, foreground_class, max_test_images)
    return ProbeData(str(data_dir), str(test_folder), train, test)


# ============================================================================================== settings
@dataclasses.dataclass(frozen=True)
class ProbeSettings:
    layers: tuple[str, ...] = DEFAULT_LAYERS
    seeds: tuple[int, ...] = (0, 1, 2)
    pixels_per_image: int = 2000
    max_train_pixels: int = 20000
    C: float = 0.1  # LogisticRegression's inverse L2 strength, on standardised features
    batch: int = 4  # tiles per forward pass
    tile_size: int = 1024  # larger images go in tiles (0 = always whole)
    tile_overlap: int = 128
    amp: bool = True  # autocast on the GPU (ignored on the CPU)

    def __post_init__(self) -> None:
        unknown = [name for name in self.layers if name not in LAYERS]
        if not self.layers or unknown or len(set(self.layers)) != len(self.layers):
            raise ConfigError(f"layers {list(self.layers)}: must be distinct names out of {list(LAYERS)}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds {list(self.seeds)}: must be a non-empty list of distinct integers")

    def per_image(self, n_images: int) -> int:
        """Train pixels sampled per image: pixels_per_image, fewer when max_train_pixels caps the total."""
        return max(1, min(self.pixels_per_image, self.max_train_pixels // max(n_images, 1)))


# ============================================================================================== trunks
def random_trunk(arch: str, in_channels: int, seed: int) -> torch.nn.Module:
    """A randomly initialised torchvision ResNet (the pretraining stage's 1-channel trunk, or torchvision's
    3-channel one), built under its own RNG so the caller's torch RNG state does not move."""
    import torchvision

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if in_channels == 1:
            trunk = one_channel_resnet(arch)
        elif in_channels == 3:
            trunk = getattr(torchvision.models, arch)(weights=None)
        else:
            raise ConfigError(f"in_channels {in_channels}: the probe builds 1- or 3-channel encoders")
    trunk.fc = torch.nn.Identity()
    return trunk.eval()


def trunk_features(trunk: torch.nn.Module, x: torch.Tensor, layers: Sequence[str]) -> dict[str, torch.Tensor]:
    """The outputs of `layers` for a normalised batch; runs only as deep as needed.

    Works for a torchvision ResNet and an smp ResNetEncoder alike (same attribute names; `conv1` means the
    conv1/bn1/relu output as smp's second feature).
    """
    deepest = max(LAYERS.index(name) for name in layers)
    out: dict[str, torch.Tensor] = {}
    x = trunk.relu(trunk.bn1(trunk.conv1(x)))
    if "conv1" in layers:
        out["conv1"] = x
    x = trunk.maxpool(x)
    for name in LAYERS[1 : deepest + 1]:
        x = getattr(trunk, name)(x)
        if name in layers:
            out[name] = x
    return out


def check_trunk_arch(trunk: torch.nn.Module, arch: str) -> None:
    """The random baseline is built from `arch`: refuse a trunk of another architecture."""
    if arch not in ARCHS:
        raise ConfigError(f"arch '{arch}': must be one of {list(ARCHS)}")
    layers = [getattr(trunk, f"layer{i}", None) for i in range(1, 5)]
    if any(layer is None for layer in layers):
        raise ConfigError("the trunk has no layer1..layer4 (a torchvision ResNet or smp ResNetEncoder is needed)")
    found = (type(layers[0][0]).__name__, tuple(len(layer) for layer in layers))
    if found != ARCH_BLOCKS[arch]:
        raise ConfigError(f"arch '{arch}' does not match the trunk ({found[0]} blocks {list(found[1])})")


def trunk_in_channels(trunk: torch.nn.Module) -> int:
    return int(trunk.conv1.in_channels)


def trunk_device(trunk: torch.nn.Module) -> torch.device:
    return next(trunk.parameters()).device


# ============================================================================================== tiles
@dataclasses.dataclass(frozen=True)
class Tile:
    """A crop of one image, and the central part of the image it answers for."""

    image_index: int
    y0: int
    x0: int
    height: int
    width: int
    core: tuple[int, int, int, int]  # y_start, y_stop, x_start, x_stop in image coordinates


def _axis_tiles(size: int, tile: int, overlap: int) -> list[tuple[int, int, int]]:
    """(start, core_start, core_stop) along one axis; cores split each overlap in the middle."""
    length = size if tile <= 0 else min(tile, size)
    starts = overlapping_tile_starts(size, length, overlap)
    bounds = [0] + [(starts[i + 1] + starts[i] + length) // 2 for i in range(len(starts) - 1)] + [size]
    return [(s, bounds[i], bounds[i + 1]) for i, s in enumerate(starts)]


def image_tiles(image_index: int, shape: tuple[int, int], tile_size: int, overlap: int) -> list[Tile]:
    h, w = shape
    th, tw = (h, w) if tile_size <= 0 else (min(tile_size, h), min(tile_size, w))
    return [
        Tile(image_index, y0, x0, th, tw, (cy0, cy1, cx0, cx1))
        for y0, cy0, cy1 in _axis_tiles(h, tile_size, overlap)
        for x0, cx0, cx1 in _axis_tiles(w, tile_size, overlap)
    ]


def tile_batches(images: Sequence[ProbeImage], settings: ProbeSettings) -> list[list[Tile]]:
    """All tiles of `images`, in order, grouped into batches of at most `batch` tiles of one shape."""
    batches: list[list[Tile]] = []
    for index, item in enumerate(images):
        for tile in image_tiles(index, item.image.shape, settings.tile_size, settings.tile_overlap):
            last = batches[-1] if batches else None
            if last and len(last) < settings.batch and (last[0].height, last[0].width) == (tile.height, tile.width):
                last.append(tile)
            else:
                batches.append([tile])
    return batches


def padded_shape(height: int, width: int) -> tuple[int, int]:
    return height + (-height) % DIVISOR, width + (-width) % DIVISOR


def normalised_batch(images: Sequence[ProbeImage], tiles: Sequence[Tile], norms: Mapping[str, Sequence[float]],
                     in_channels: int, device: torch.device) -> torch.Tensor:
    """uint8 crops -> (N, C, Hp, Wp) normalised, reflect-padded (bottom/right) to a multiple of 32."""
    crops = np.stack([images[t.image_index].image[t.y0 : t.y0 + t.height, t.x0 : t.x0 + t.width] for t in tiles])
    x = torch.from_numpy(crops).to(device).float().div_(255.0)[:, None]
    if in_channels == 3:
        x = x.expand(-1, 3, -1, -1)
    mean = torch.tensor(norms["mean"], dtype=torch.float32, device=device).view(1, -1, 1, 1)
    std = torch.tensor(norms["std"], dtype=torch.float32, device=device).view(1, -1, 1, 1)
    x = (x - mean) / std
    h, w = x.shape[-2:]
    hp, wp = padded_shape(h, w)
    if (hp, wp) != (h, w):
        mode = "reflect" if hp - h < h and wp - w < w else "replicate"  # reflect needs pad < size
        x = F.pad(x, (0, wp - w, 0, hp - h), mode=mode)
    return x


@torch.inference_mode()
def batch_features(trunk: torch.nn.Module, x: torch.Tensor, layers: Sequence[str], amp: bool
                   ) -> dict[str, torch.Tensor]:
    with autocast(x.device, enabled=amp):
        feats = trunk_features(trunk, x, layers)
    return {name: f.float() for name, f in feats.items()}


# ============================================================================================== pixels
def sample_pixels(masks: Sequence[np.ndarray], per_image: int, seed: int) -> list[np.ndarray]:
    """Flat pixel indices per image: half foreground, half background (the rest from the other class when one
    is short), without replacement, sorted; from numpy.random.default_rng(seed)."""
    rng = np.random.default_rng(seed)
    out = []
    for mask in masks:
        flat = mask.reshape(-1)
        fg, bg = np.flatnonzero(flat), np.flatnonzero(flat == 0)
        n = min(per_image, flat.size)
        n_fg = min(len(fg), max(n // 2, n - len(bg)))
        n_bg = min(len(bg), n - n_fg)
        chosen = np.concatenate([rng.choice(fg, n_fg, replace=False), rng.choice(bg, n_bg, replace=False)])
        out.append(np.sort(chosen))
    return out


def train_pixel_count(data: ProbeData, settings: ProbeSettings) -> int:
    """Pixels sample_pixels draws per seed (every image gives min(per_image, its size))."""
    per_image = settings.per_image(len(data.train))
    return sum(min(per_image, item.mask.size) for item in data.train)


def features_at(features: Mapping[str, torch.Tensor], layers: Sequence[str], ys: np.ndarray, xs: np.ndarray,
                padded_hw: tuple[int, int]) -> torch.Tensor:
    """(P, sum C) features of one tile (features: layer -> (C, h, w)) at tile pixels (ys, xs), bilinearly
    interpolated exactly as F.interpolate(size=padded_hw, mode="bilinear", align_corners=False) would."""
    hp, wp = padded_hw
    device = next(iter(features.values())).device
    gx = (2.0 * torch.as_tensor(xs, dtype=torch.float32) + 1.0) / wp - 1.0
    gy = (2.0 * torch.as_tensor(ys, dtype=torch.float32) + 1.0) / hp - 1.0
    grid = torch.stack([gx, gy], dim=-1).view(1, 1, -1, 2).to(device)
    parts = [
        F.grid_sample(features[name][None], grid, mode="bilinear", padding_mode="border", align_corners=False)[0, :, 0]
        for name in layers
    ]
    return torch.cat(parts).T


# ============================================================================================== the linear probe
@dataclasses.dataclass(frozen=True)
class LinearProbe:
    """Logistic regression on raw features: logit = sum_c weight_c * (f_c - mean_c) + bias."""

    weight: np.ndarray  # (C,) float64, standardisation folded in (coef / std)
    mean: np.ndarray  # (C,) float64
    bias: float


def fit_probe(features: np.ndarray, labels: np.ndarray, C: float) -> LinearProbe:
    """Standardise on these pixels, fit LogisticRegression (lbfgs: deterministic), fold the scaling back."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    features = features.astype(np.float64)
    mean = features.mean(0)
    std = features.std(0)
    std[std < STD_FLOOR] = 1.0
    z = (features - mean) / std
    if len(np.unique(labels)) < 2:  # one class only: predict it everywhere
        return LinearProbe(np.zeros_like(mean), mean, 10.0 if labels[0] else -10.0)
    with warnings.catch_warnings():
        # a capped iteration count is part of the probe's definition; the result is deterministic either way
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf = LogisticRegression(C=C, max_iter=300).fit(z, labels)
    return LinearProbe(clf.coef_[0] / std, mean, float(clf.intercept_[0]))


def split_by_layer(vector: np.ndarray, channels: Sequence[int]) -> list[np.ndarray]:
    return np.split(vector, np.cumsum(channels)[:-1])


def dense_logits(features: Mapping[str, torch.Tensor], layers: Sequence[str], probes: Sequence[LinearProbe],
                 padded_hw: tuple[int, int]) -> torch.Tensor:
    """(N, S, Hp, Wp) full-resolution logits of S probes: each layer's 1x1 logit map upsampled and summed
    (equal to the probe on the upsampled, concatenated features, as both maps are affine)."""
    channels = [features[name].shape[1] for name in layers]
    device = features[layers[0]].device
    weights = [np.stack(ws) for ws in zip(*(split_by_layer(p.weight, channels) for p in probes))]
    offset = np.array([p.bias - float(p.weight @ p.mean) for p in probes])
    total = None
    for name, w in zip(layers, weights):
        w_t = torch.as_tensor(w, dtype=torch.float32, device=device)
        logit = torch.einsum("nchw,sc->nshw", features[name], w_t)
        logit = F.interpolate(logit, size=padded_hw, mode="bilinear", align_corners=False)
        total = logit if total is None else total + logit
    return total + torch.as_tensor(offset, dtype=torch.float32, device=device).view(1, -1, 1, 1)


# ============================================================================================== scoring a trunk
@dataclasses.dataclass
class TrunkScore:
    iou: float  # mean over test images
    image_ious: list[float]
    example: np.ndarray  # (H, W) uint8 prediction on the first test image


def train_pixel_features(trunk: torch.nn.Module, data: ProbeData, samples: Mapping[int, list[np.ndarray]],
                         norms: Mapping[str, Sequence[float]], settings: ProbeSettings, bar) -> dict[int, np.ndarray]:
    """(P, sum C) float32 train features per seed, rows in the order of the seed's sample (image by image)."""
    device, in_channels = trunk_device(trunk), trunk_in_channels(trunk)
    layers = settings.layers
    offsets = {seed: np.cumsum([0] + [len(idx) for idx in per_image]) for seed, per_image in samples.items()}
    out: dict[int, np.ndarray] = {}
    for batch in tile_batches(data.train, settings):
        x = normalised_batch(data.train, batch, norms, in_channels, device)
        feats = batch_features(trunk, x, layers, settings.amp)
        for j, tile in enumerate(batch):
            width = data.train[tile.image_index].image.shape[1]
            cy0, cy1, cx0, cx1 = tile.core
            for seed, per_image in samples.items():
                ys, xs = np.divmod(per_image[tile.image_index], width)
                inside = np.flatnonzero((ys >= cy0) & (ys < cy1) & (xs >= cx0) & (xs < cx1))
                if not len(inside):
                    continue
                values = features_at({k: v[j] for k, v in feats.items()}, layers, ys[inside] - tile.y0,
                                     xs[inside] - tile.x0, tuple(x.shape[-2:]))
                if seed not in out:
                    out[seed] = np.zeros((int(offsets[seed][-1]), values.shape[1]), np.float32)
                out[seed][offsets[seed][tile.image_index] + inside] = values.cpu().numpy()
        bar.update(len(batch))
    return out


def score_test_images(trunk: torch.nn.Module, data: ProbeData, probes: Mapping[int, LinearProbe],
                      norms: Mapping[str, Sequence[float]], settings: ProbeSettings, bar) -> dict[int, TrunkScore]:
    """Dense predictions of every seed's probe on the test images; IoU of the foreground per image."""
    device, in_channels = trunk_device(trunk), trunk_in_channels(trunk)
    seeds = list(probes)
    ordered = [probes[s] for s in seeds]
    image_ious: dict[int, list[float]] = {s: [] for s in seeds}
    examples: dict[int, np.ndarray] = {}
    logits_of: dict[int, np.ndarray] = {}  # image index -> (S, H, W), until its last tile is in
    tiles_left = {i: len(image_tiles(i, item.image.shape, settings.tile_size, settings.tile_overlap))
                  for i, item in enumerate(data.test)}
    for batch in tile_batches(data.test, settings):
        x = normalised_batch(data.test, batch, norms, in_channels, device)
        feats = batch_features(trunk, x, settings.layers, settings.amp)
        logits = dense_logits(feats, settings.layers, ordered, tuple(x.shape[-2:])).cpu().numpy()
        for j, tile in enumerate(batch):
            item = data.test[tile.image_index]
            full = logits_of.setdefault(tile.image_index, np.zeros((len(seeds), *item.image.shape), np.float32))
            cy0, cy1, cx0, cx1 = tile.core
            full[:, cy0:cy1, cx0:cx1] = logits[j, :, cy0 - tile.y0 : cy1 - tile.y0, cx0 - tile.x0 : cx1 - tile.x0]
            tiles_left[tile.image_index] -= 1
            if tiles_left[tile.image_index] == 0:
                full = logits_of.pop(tile.image_index)
                for k, seed in enumerate(seeds):
                    pred = (full[k] > 0).astype(np.uint8)
                    image_ious[seed].append(ious(pred, item.mask, [1])[1])
                    if tile.image_index == 0:
                        examples[seed] = pred
        bar.update(len(batch))
    return {s: TrunkScore(mean_of(image_ious[s]), image_ious[s], examples[s]) for s in seeds}


def score_trunk(trunk: torch.nn.Module, data: ProbeData, seeds: Sequence[int], norms: Mapping[str, Sequence[float]],
                settings: ProbeSettings, bar) -> dict[int, TrunkScore]:
    """Probe one frozen trunk with each seed's pixel sample: one train pass and one test pass for all seeds."""
    per_image = settings.per_image(len(data.train))
    masks = [item.mask for item in data.train]
    samples = {seed: sample_pixels(masks, per_image, seed) for seed in seeds}
    features = train_pixel_features(trunk, data, samples, norms, settings, bar)
    probes = {}
    for seed in seeds:
        labels = np.concatenate([m.reshape(-1)[idx] for m, idx in zip(masks, samples[seed])])
        probes[seed] = fit_probe(features[seed], labels, settings.C)
    return score_test_images(trunk, data, probes, norms, settings, bar)


# ============================================================================================== results
def _sd(values: Sequence[float]) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


@dataclasses.dataclass
class ProbeResult:
    encoder: str
    arch: str
    layers: list[str]
    seeds: list[int]
    encoder_iou: list[float]  # per seed (the encoder is fixed; the seed picks the train pixels)
    random_iou: list[float]  # per seed (the seed also initialises the random encoder)
    encoder_image_iou: list[list[float]]
    random_image_iou: list[list[float]]
    data_dir: str
    test_dir: str
    n_train_images: int
    n_test_images: int
    train_pixels: int  # per seed
    seconds: float
    settings: dict
    example_name: str = ""
    example_encoder: np.ndarray | None = dataclasses.field(default=None, repr=False)
    example_random: np.ndarray | None = dataclasses.field(default=None, repr=False)

    @property
    def difference(self) -> list[float]:
        return [e - r for e, r in zip(self.encoder_iou, self.random_iou)]

    @property
    def encoder_mean(self) -> float:
        return float(np.mean(self.encoder_iou))

    @property
    def random_mean(self) -> float:
        return float(np.mean(self.random_iou))

    @property
    def difference_mean(self) -> float:
        return float(np.mean(self.difference))

    def as_dict(self) -> dict[str, Any]:
        """The JSON record (no arrays)."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if not f.name.startswith("example_")}
        fields["example_name"] = self.example_name
        return {
            **fields,
            "difference": self.difference,
            "encoder_mean": self.encoder_mean, "encoder_sd": _sd(self.encoder_iou),
            "random_mean": self.random_mean, "random_sd": _sd(self.random_iou),
            "difference_mean": self.difference_mean, "difference_sd": _sd(self.difference),
        }


def report_lines(result: ProbeResult) -> list[str]:
    """Per-seed table, means with sds, and last the line `Probe_IoU: E (random: R, difference: D)`."""
    lines = [f"probe: {result.encoder} ({result.arch}, {'+'.join(result.layers)}), {result.n_train_images} train / "
             f"{result.n_test_images} test images, {result.train_pixels} train pixels per seed",
             f"{'seed':>6} {'encoder IoU':>12} {'random IoU':>11} {'difference':>11}"]
    for seed, e, r, d in zip(result.seeds, result.encoder_iou, result.random_iou, result.difference):
        lines.append(f"{seed:>6} {e:>12.4f} {r:>11.4f} {d:>+11.4f}")
    r = result.as_dict()
    lines.append(f"{'mean':>6} {r['encoder_mean']:>12.4f} {r['random_mean']:>11.4f} {r['difference_mean']:>+11.4f}")
    lines.append(f"{'sd':>6} {r['encoder_sd']:>12.4f} {r['random_sd']:>11.4f} {r['difference_sd']:>11.4f}")
    lines.append(f"({result.seconds:.1f} s)")
    lines.append(f"Probe_IoU: {result.encoder_mean:.4f} (random: {result.random_mean:.4f}, "
                 f"difference: {result.difference_mean:.4f})")
    return lines


# ============================================================================================== entry points
def _as_norms(norms: Mapping[str, Any] | Sequence[float]) -> dict[str, list[float]]:
    return Norms.parse(norms).as_dict()  # a config's dict or an exported file's [mean, std]


def _progress(total: int, enabled: bool, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, disable=not enabled, desc=desc, unit="tile", leave=False)


def _work_units(data: ProbeData, settings: ProbeSettings) -> int:
    return sum(len(b) for b in tile_batches(data.train, settings)) + sum(len(b) for b in tile_batches(data.test,
                                                                                                          settings))


def _baseline_scores(data: ProbeData, arch: str, in_channels: int, norms: dict, device: torch.device,
                     settings: ProbeSettings, bar) -> dict[int, TrunkScore]:
    """Random-encoder scores per seed, cached in `data` (same pixels, seeds and settings give the same score)."""
    scores = {}
    for seed in settings.seeds:
        other = tuple(v for k, v in dataclasses.asdict(settings).items() if k != "seeds")
        key = (arch, in_channels, tuple(norms["mean"]), tuple(norms["std"]), device.type, seed, other)
        if key not in data.baseline_cache:
            trunk = random_trunk(arch, in_channels, seed).to(device)
            data.baseline_cache[key] = score_trunk(trunk, data, [seed], norms, settings, bar)[seed]
            del trunk
        else:
            bar.update(_work_units(data, settings))
        scores[seed] = data.baseline_cache[key]
    return scores


def _probe(trunk: torch.nn.Module, name: str, arch: str, data: ProbeData, norms: dict, settings: ProbeSettings,
           progress: bool, started: float) -> ProbeResult:
    device = trunk_device(trunk)
    units = _work_units(data, settings)
    with _progress(units * (1 + len(settings.seeds)), progress, "probe") as bar:
        encoder_scores = score_trunk(trunk, data, settings.seeds, norms, settings, bar)
        random_scores = _baseline_scores(data, arch, trunk_in_channels(trunk), norms, device, settings, bar)
    seeds = list(settings.seeds)
    return ProbeResult(
        encoder=name, arch=arch, layers=list(settings.layers), seeds=seeds,
        encoder_iou=[encoder_scores[s].iou for s in seeds], random_iou=[random_scores[s].iou for s in seeds],
        encoder_image_iou=[encoder_scores[s].image_ious for s in seeds],
        random_image_iou=[random_scores[s].image_ious for s in seeds],
        data_dir=data.data_dir, test_dir=data.test_dir, n_train_images=len(data.train), n_test_images=len(data.test),
        train_pixels=train_pixel_count(data, settings),
        seconds=time.time() - started, settings=_settings_record(settings),
        example_name=data.test[0].name, example_encoder=encoder_scores[seeds[0]].example,
        example_random=random_scores[seeds[0]].example,
    )


def _settings_record(settings: ProbeSettings) -> dict:
    record = dataclasses.asdict(settings)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in record.items()}


def probe_trunk(trunk: torch.nn.Module, arch: str, data: ProbeData, norms: Mapping[str, Any] | Sequence[float],
                settings: ProbeSettings = ProbeSettings(), progress: bool = False, name: str = "trunk") -> ProbeResult:
    """Probe a torchvision ResNet trunk (or smp ResNetEncoder) in place; see the module docstring."""
    check_trunk_arch(trunk, arch)
    started = time.time()
    was_training = trunk.training
    trunk.eval()
    try:
        return _probe(trunk, name, arch, data, _as_norms(norms), settings, progress, started)
    finally:
        trunk.train(was_training)


def encoder_arch(weights, arch: str | None, encoder: str) -> str:
    """The architecture: the `arch` key, else the weights' own `arch` (files that record it), else resnet50."""
    recorded = getattr(weights, "arch", None)
    if arch is not None and recorded and arch != recorded:
        raise ConfigError(f"arch '{arch}': encoder '{encoder}' holds a {recorded} encoder")
    return arch or recorded or "resnet50"


def build_encoder(encoder: str, arch: str | None, norms: Mapping[str, Any]):
    """(smp encoder in eval mode, arch, norms, in_channels) for any `pretraining` value."""
    if encoder in PUBLISHED and arch not in (None, "resnet50"):  # before a download that could not be used
        raise ConfigError(f"arch '{arch}': encoder '{encoder}' is a resnet50 encoder")
    weights = resolve_pretraining(encoder, norms)
    arch = encoder_arch(weights, arch, encoder)
    if arch not in ARCHS:
        raise ConfigError(f"arch '{arch}': must be one of {list(ARCHS)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ENCODER_INIT_SEED)  # only random_init's weights depend on it
        model = build_unet(1, weights, encoder=arch)
    return model.encoder.eval(), arch, _as_norms(weights.norms), weights.in_channels


def probe_encoder(encoder: str, data: ProbeData, arch: str | None = None, norms: Mapping[str, Any] = EM_NORMS,
                  settings: ProbeSettings = ProbeSettings(), device: str = "auto", progress: bool = True
                  ) -> ProbeResult:
    """Probe anything the evaluation stage's `pretraining` key accepts; see the module docstring."""
    started = time.time()
    trunk, arch, enc_norms, _ = build_encoder(encoder, arch, norms)
    trunk = trunk.to(select_device(device))
    return _probe(trunk, encoder, arch, data, enc_norms, settings, progress, started)


# ============================================================================================== config and script
def _check_layers(value) -> str | None:
    if not value or any(v not in LAYERS for v in value) or len(set(value)) != len(value):
        return f"must be a non-empty list of distinct names out of {list(LAYERS)}"
    return None


def _check_seeds(value) -> str | None:
    if not value or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return "must be a non-empty list of integers"
    return None if len(set(value)) == len(value) else "must not repeat a seed"


def _positive(value) -> str | None:
    return None if value > 0 else "must be > 0"


def _non_negative(value) -> str | None:
    return None if value >= 0 else "must be >= 0"


def _norms_check(value) -> str | None:
    return _check_norms(value)


PROBE_SCHEMA: dict[str, Field] = {
    "arch": Field(str, None, nullable=True, choices=ARCHS,
                  help="encoder architecture (default: the file's, else resnet50)"),
    "layers": Field(list, list(DEFAULT_LAYERS), check=_check_layers, help=f"features, out of {list(LAYERS)}"),
    "seeds": Field(list, [0, 1, 2], check=_check_seeds, help="random-encoder init and pixel-sample seeds"),
    "pixels_per_image": Field(int, 2000, check=_positive, help="train pixels sampled per image (class-balanced)"),
    "max_train_pixels": Field(int, 20000, check=_positive, help="cap on train pixels per seed"),
    "C": Field(float, 0.1, check=_positive, help="LogisticRegression inverse L2 strength (standardised features)"),
    "test_dir": Field(str, None, nullable=True, help="test folder (default DATA_DIR/test, else DATA_DIR/test2d)"),
    "foreground_class": Field(int, None, nullable=True, check=_positive,
                              help="label scored as foreground (default: any non-zero label)"),
    "max_train_images": Field(int, None, nullable=True, check=_positive, help="use only the first N train images"),
    "max_test_images": Field(int, None, nullable=True, check=_positive, help="use only the first N test images"),
    "device": Field(str, "auto", help="auto, cpu or cuda"),
    "amp": Field(bool, True, help="mixed precision on the GPU"),
    "batch": Field(int, 4, check=_positive, help="tiles per forward pass"),
    "tile_size": Field(int, 1024, check=_non_negative, help="tile larger images (0 = whole images)"),
    "tile_overlap": Field(int, 128, check=_non_negative, help="tile overlap in pixels"),
    "norms": Field(dict, {"mean": list(EM_NORMS["mean"]), "std": list(EM_NORMS["std"])}, check=_norms_check,
                   help="input normalisation for random_init (files carry their own)"),
    "out": Field(str, None, nullable=True, help="folder for result.json and probe.png (default: write nothing)"),
    "figure": Field(bool, True, help="with out: also write probe.png"),
}


def load_probe_config(overrides: Iterable[str] | Mapping[str, Any] = ()) -> dict[str, Any]:
    """Validate key=value overrides against PROBE_SCHEMA (unknown keys, types, choices -> ConfigError)."""
    cfg = load_config(None, PROBE_SCHEMA, overrides, source="probe")
    if cfg["tile_size"] and cfg["tile_overlap"] >= cfg["tile_size"]:
        raise ConfigError("probe: key 'tile_overlap' must be smaller than tile_size")
    if cfg["tile_size"] and cfg["tile_size"] < DIVISOR:
        raise ConfigError(f"probe: key 'tile_size' must be 0 or at least {DIVISOR}")
    return cfg


def settings_from_config(cfg: Mapping[str, Any]) -> ProbeSettings:
    return ProbeSettings(
        layers=tuple(cfg["layers"]), seeds=tuple(cfg["seeds"]), pixels_per_image=cfg["pixels_per_image"],
        max_train_pixels=cfg["max_train_pixels"], C=cfg["C"], batch=cfg["batch"], tile_size=cfg["tile_size"],
        tile_overlap=cfg["tile_overlap"], amp=cfg["amp"],
    )


def run_probe(encoder: str, data_dir: str | Path, cfg: Mapping[str, Any], progress: bool = True) -> ProbeResult:
    """The script: load the data, probe the encoder against random ones, write result.json (+ figure) to out."""
    data = load_probe_data(data_dir, cfg["test_dir"], cfg["foreground_class"], cfg["max_train_images"],
                           cfg["max_test_images"])
    result = probe_encoder(encoder, data, arch=cfg["arch"], norms=cfg["norms"], settings=settings_from_config(cfg),
                           device=cfg["device"], progress=progress)
    if cfg["out"]:
        write_result(result, cfg["out"])
        if cfg["figure"]:
            write_figure(result, data.test[0], Path(cfg["out"]) / "probe.png")
    return result


def write_result(result: ProbeResult, out_dir: str | Path) -> Path:
    path = Path(out_dir) / "result.json"
    atomic_write_text(path, json.dumps(result.as_dict(), indent=2) + "\n")
    return path


def write_figure(result: ProbeResult, item: ProbeImage, path: str | Path) -> Path:
    """Image / mask / probe prediction of the encoder and of the random encoder (seed seeds[0])."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    seed = result.seeds[0]
    panels = [
        ("image", item.image),
        ("mask", item.mask),
        (f"{result.encoder}: IoU {result.encoder_image_iou[0][0]:.3f}", result.example_encoder),
        (f"random (seed {seed}): IoU {result.random_image_iou[0][0]:.3f}", result.example_random),
    ]
    fig = Figure(figsize=(4 * len(panels), 4.4))
    FigureCanvasAgg(fig)
    for i, (title, array) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        ax.imshow(array, cmap="gray", interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.suptitle(f"linear probe on {'+'.join(result.layers)} ({result.arch}), {item.name}", fontsize=10)
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100, bbox_inches="tight", format="png")
    return path
