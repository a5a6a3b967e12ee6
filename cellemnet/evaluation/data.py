"""Benchmark data: `{dir}/images/` and `{dir}/masks/`, paired by file name (as the original).

Images of any size and bit depth are read as 8-bit grayscale (cellemnet.io). Masks hold class labels; for
binary benchmarks any non-zero value is the foreground (so 0/255 masks work as well as 0/1). A folder without
`masks/` is inference-only.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from cellemnet.errors import InputError
from cellemnet.evaluation.augment import seed_pipeline
from cellemnet.io import file_suffix, is_image_file, is_volume_file, read_image, to_uint8


@dataclass(frozen=True)
class Pair:
    name: str
    image: Path
    mask: Path | None


def _visible_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def find_pairs(folder: str | Path, require_masks: bool, volumes: bool = False) -> list[Pair]:
    """Images in folder/images with their same-named masks in folder/masks (or the same stem, any suffix)."""
    folder = Path(folder)
    images_dir, masks_dir = folder / "images", folder / "masks"
    if not images_dir.is_dir():
        raise InputError(f"{folder}: no 'images' folder")
    accept = is_volume_file if volumes else is_image_file
    images = [p for p in _visible_files(images_dir) if accept(p)]
    if not images:
        raise InputError(f"{images_dir}: no {'volumes' if volumes else 'images'} found")
    if not masks_dir.is_dir():
        if require_masks:
            raise InputError(f"{folder}: no 'masks' folder (needed for training)")
        return [Pair(p.name, p, None) for p in images]
    by_stem: dict[str, Path] = {}
    for m in _visible_files(masks_dir):
        by_stem.setdefault(m.name.split(".")[0], m)
    pairs = []
    for p in images:
        mask = masks_dir / p.name
        if not mask.is_file():
            mask = by_stem.get(p.name.split(".")[0])
        if mask is None and require_masks:
            raise InputError(f"{p}: no mask with the same name in {masks_dir}")
        pairs.append(Pair(p.name, p, mask))
    return pairs


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) of a 2D image from its header where the format allows (TIFF, PNG, JPEG, BMP)."""
    try:
        if file_suffix(path) in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tif:
                shape, axes = tif.series[0].shape, tif.series[0].axes
            if "Y" in axes and "X" in axes:
                return int(shape[axes.index("Y")]), int(shape[axes.index("X")])
        else:
            from PIL import Image

            with Image.open(path) as img:  # lazy: reads the header only
                width, height = img.size
            return int(height), int(width)
    except Exception:  # a header the fast path cannot read: read the image
        pass
    return tuple(read_image(path).shape[:2])


def read_gray8(path: Path) -> np.ndarray:
    return to_uint8(read_image(path), name=str(path))


def read_mask(path: Path, num_classes: int) -> np.ndarray:
    """Integer labels (uint8); binary -> 0/1 from any non-zero value; out-of-range labels are an error."""
    mask = np.asarray(read_image(path))
    if num_classes == 1:
        return (mask > 0).astype(np.uint8)
    top = int(mask.max()) if mask.size else 0
    if top >= num_classes:
        raise InputError(f"{path}: mask holds label {top} but num_classes is {num_classes}")
    return mask.astype(np.uint8)


def test_labels(mask: np.ndarray, num_classes: int) -> np.ndarray:
    """Ground truth for scoring: labels as stored, except that a binary benchmark's 0/255 mask becomes 0/1.

    Other values are kept, so a binary test mask may carry a second label (e.g. 'inside the cell' for
    mask_prediction3d) that only matters for masking, never for the scored class.
    """
    mask = np.asarray(mask)
    if num_classes == 1 and mask.size and int(mask.max()) == 255 and np.isin(mask, (0, 255)).all():
        return (mask > 0).astype(np.uint8)
    return mask


def to_channels(image: np.ndarray, in_channels: int) -> np.ndarray:
    """(H, W) -> (H, W, C): one channel, or the gray image copied to RGB for ImageNet weights."""
    image = image[..., None]
    return np.repeat(image, 3, axis=-1) if in_channels == 3 else image


class SeededDraws:
    """An index sampler's indices, each paired with its draw's seed words (*stream, draw number).

    The dataset reseeds its augmentation from those words, so image k of the run is augmented the same way
    whichever DataLoader worker (or the main process) prepares it. The draw counter lives here, in the main
    process, and runs on across epochs (each epoch gets fresh augmentations).
    """

    def __init__(self, sampler, stream: tuple[int, ...]):
        self.sampler = sampler
        self.stream = tuple(int(w) for w in stream)
        self.draws = 0
        self.skip = 0  # draws of the coming pass already seen before a resume (fast_forward)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        skip, self.skip = self.skip, 0
        for index in self.sampler:
            if skip:
                skip -= 1
            else:
                yield int(index), (*self.stream, self.draws)
            self.draws += 1

    def fast_forward(self, epochs: int, draws: int) -> None:
        """Stand where an uninterrupted run stood after `epochs` passes and `draws` more draws: the passes are
        replayed index by index (cheap: no image is read), which advances a shuffle's generator as they did."""
        for epoch in range(epochs):
            self.set_epoch(epoch)
            for _ in self.sampler:
                pass
        self.draws = epochs * len(self.sampler)
        self.skip = draws

    def set_epoch(self, epoch: int) -> None:
        """For DistributedSampler underneath (a new shuffle each epoch)."""
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)


class SegmentationDataset:
    """torch-style dataset of (image CHW float32, mask, name) after the albumentations pipeline.

    Items are an index, or (index, seed words) from SeededDraws: the pipeline is then reseeded from the words
    first (cellemnet.evaluation.augment.seed_pipeline).
    mask: (1, H, W) float 0/1 for binary, (H, W) int64 labels for multi-class; all zeros when absent.
    """

    def __init__(self, folder: str | Path, transforms: Callable, in_channels: int, num_classes: int,
                 require_masks: bool = True):
        self.pairs = find_pairs(folder, require_masks=require_masks)
        self.transforms = transforms
        self.in_channels = in_channels
        self.num_classes = num_classes

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, item: int | tuple[int, tuple[int, ...]]) -> dict:
        import torch

        if isinstance(item, tuple):
            index, words = item
            seed_pipeline(self.transforms, words)
        else:
            index = item
        pair = self.pairs[index]
        image = read_gray8(pair.image)
        if pair.mask is not None:
            mask = read_mask(pair.mask, self.num_classes)
            if mask.shape != image.shape:
                raise InputError(f"{pair.mask}: mask shape {mask.shape} != image shape {image.shape}")
        else:
            mask = np.zeros(image.shape, np.uint8)
        out = self.transforms(image=to_channels(image, self.in_channels), mask=mask)
        x = torch.from_numpy(np.ascontiguousarray(out["image"].transpose(2, 0, 1))).float()
        m = torch.from_numpy(np.ascontiguousarray(out["mask"]))
        m = m[None].float() if self.num_classes == 1 else m.long()
        return {"image": x, "mask": m, "name": pair.name}
