"""Turning images and volumes into class probabilities with a trained U-Net.

* Inputs of any size: reflection-padded (bottom/right) to a multiple of 32, predicted, cropped back.
* 2D images larger than a tile size are predicted in overlapping tiles, blended with a smooth weight window,
  so memory stays bounded; images that fit are predicted whole (tiling then gives the same result).
* 3D: `stack` predicts the xy slices; `orthoplane` also predicts the xz and yz slices and averages the three
  float probabilities. Slices go through the network in batches. A plane orientation whose slices would be
  thinner than MIN_PLANE_SIDE (xz and yz of a 5-slice stack) is left out with a printed note (`plane_axes`).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from cellemnet.constants import DEFAULT_CROP_SIZE
from cellemnet.runtime import autocast

DIVISOR = 32  # the U-Net halves the size five times
# Curation's rule for thin cross sections (dataset.tiling.usable_axes): a slice shorter than half the crop size
# is a sliver; its predictions (mostly padding and border) would drag the orthoplane average down.
MIN_PLANE_SIDE = DEFAULT_CROP_SIZE // 2


class Predictor:
    """Wraps a model with its normalisation: uint8 gray arrays in, float32 probabilities (C, ...) out."""

    def __init__(self, model: torch.nn.Module, norms: dict, in_channels: int, num_classes: int,
                 device: torch.device, amp: bool = True):
        self.model = model.eval().to(device)
        self.device = device
        self.amp = amp and device.type == "cuda"
        self.in_channels = in_channels
        self.num_classes = num_classes
        mean = torch.tensor(norms["mean"], dtype=torch.float32, device=device).view(1, -1, 1, 1)
        std = torch.tensor(norms["std"], dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.mean, self.std = mean, std
        if device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)

    def _prepare(self, batch: np.ndarray) -> torch.Tensor:
        """(N, H, W) uint8 -> normalised (N, C, H, W) float on the device."""
        x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device).float().div_(255.0)[:, None]
        if self.in_channels == 3:
            x = x.expand(-1, 3, -1, -1)
        return (x - self.mean) / self.std

    @torch.inference_mode()
    def logits_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised (N, C, H, W) -> logits of the same H, W (padding to a multiple of 32 inside)."""
        h, w = x.shape[-2:]
        x = pad_to_divisor(x)
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(self.device, enabled=self.amp):
            out = self.model(x)
        return out[..., :h, :w].float()

    def probabilities_tensor(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.sigmoid() if self.num_classes == 1 else logits.softmax(1)

    def predict_batch(self, batch: np.ndarray) -> np.ndarray:
        """(N, H, W) uint8 -> (N, C, H, W) float32 probabilities."""
        probs = self.probabilities_tensor(self.logits_tensor(self._prepare(batch)))
        return probs.cpu().numpy()

    # ------------------------------------------------------------------ 2D
    def predict_image(self, image: np.ndarray, tile_size: int = 0, overlap: int = 0, batch: int = 4) -> np.ndarray:
        """(H, W) uint8 -> (C, H, W) probabilities; tiled when a side exceeds tile_size (0 = never)."""
        h, w = image.shape
        if not tile_size or (h <= tile_size and w <= tile_size):
            return self.predict_batch(image[None])[0]
        return self._predict_tiled(image, tile_size, overlap, batch)

    def _predict_tiled(self, image: np.ndarray, tile: int, overlap: int, batch: int) -> np.ndarray:
        h, w = image.shape
        th, tw = min(tile, h), min(tile, w)
        ys, xs = overlapping_tile_starts(h, th, overlap), overlapping_tile_starts(w, tw, overlap)
        window = blend_window(th, tw, overlap)
        acc = np.zeros((self.num_classes, h, w), np.float32)
        weight = np.zeros((h, w), np.float32)
        boxes = [(y, x) for y in ys for x in xs]
        for i in range(0, len(boxes), batch):
            chunk = boxes[i : i + batch]
            tiles = np.stack([image[y : y + th, x : x + tw] for y, x in chunk])
            probs = self.predict_batch(tiles)
            for (y, x), p in zip(chunk, probs):
                acc[:, y : y + th, x : x + tw] += p * window
                weight[y : y + th, x : x + tw] += window
        return acc / weight

    # ------------------------------------------------------------------ 3D
    def predict_volume(self, volume: np.ndarray, mode: str = "stack", batch: int = 16, progress: bool = False,
                       desc: str = "", axes: Sequence[int] | None = None) -> np.ndarray:
        """(D, H, W) uint8 -> (C, D, H, W) float32 mean probability over the planes of `mode`.

        axes: the slice axes to average (default: plane_axes of this volume, printing a note for each left out;
        the block-wise predictor passes those of the whole volume)."""
        if axes is None:
            axes, notes = plane_axes(volume.shape, mode)
            for note in notes:
                print(f"note: {note}")
        acc = np.zeros((self.num_classes, *volume.shape), np.float32)
        total = sum(volume.shape[a] for a in axes)
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=total, desc=desc or f"{mode} slices", unit="slice", leave=False)
        for axis in axes:
            moved = np.moveaxis(volume, axis, 0)  # slices along `axis` become the batch dimension
            acc_view = np.moveaxis(acc, axis + 1, 1)
            for start in range(0, moved.shape[0], batch):
                stop = min(start + batch, moved.shape[0])
                probs = self.predict_batch(moved[start:stop])  # (n, C, h, w)
                acc_view[:, start:stop] += probs.transpose(1, 0, 2, 3)
                if bar is not None:
                    bar.update(stop - start)
        if bar is not None:
            bar.close()
        acc /= len(axes)
        return acc


def plane_axes(shape: Sequence[int], mode: str) -> tuple[list[int], list[str]]:
    """The slice axes `mode` predicts a (D, H, W) volume on (0: xy, 1: xz, 2: yz), and a note for each plane
    orientation left out because its slices would be thinner than MIN_PLANE_SIDE (xy is always kept)."""
    if mode not in ("stack", "orthoplane"):
        raise ValueError(f"mode must be 'stack' or 'orthoplane', got {mode!r}")
    if mode == "stack":
        return [0], []
    d, h, w = (int(n) for n in shape)
    axes, notes = [0], []
    for axis, name, side in ((1, "xz", (d, w)), (2, "yz", (d, h))):
        if min(side) < MIN_PLANE_SIDE:
            notes.append(f"orthoplane: {name} planes left out of the average: their {side[0]}x{side[1]} slices are "
                         f"thinner than {MIN_PLANE_SIDE} pixels")
        else:
            axes.append(axis)
    return axes, notes


def pad_to_divisor(x: torch.Tensor) -> torch.Tensor:
    """Pad (N, C, H, W) at the bottom and right to sides that are multiples of the U-Net's DIVISOR."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % DIVISOR, (-w) % DIVISOR
    if not (ph or pw):
        return x
    mode = "reflect" if ph < h and pw < w else "replicate"  # reflect needs pad < size; replicate for tiny sides
    return F.pad(x, (0, pw, 0, ph), mode=mode)


def overlapping_tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Tile start positions covering [0, size) with at least `overlap` pixels shared; the last ends at size."""
    if tile >= size:
        return [0]
    step = max(tile - overlap, 1)
    starts = list(range(0, size - tile, step))
    starts.append(size - tile)
    return sorted(set(starts))


def blend_window(h: int, w: int, overlap: int) -> np.ndarray:
    """Weights that ramp linearly over `overlap` pixels at each edge (never 0), so seams are blended."""

    def ramp(n: int) -> np.ndarray:
        r = np.ones(n, np.float32)
        k = min(overlap, n // 2)
        if k > 0:
            edge = (np.arange(k, dtype=np.float32) + 1) / (k + 1)
            r[:k] = edge
            r[n - k :] = edge[::-1]
        return r

    return np.outer(ramp(h), ramp(w))


def labels_from_probabilities(probs: np.ndarray, threshold: float) -> np.ndarray:
    """(C, ...) probabilities -> integer labels: threshold for binary, argmax for multi-class."""
    if probs.shape[0] == 1:
        return (probs[0] > threshold).astype(np.uint8)
    return probs.argmax(0).astype(np.uint8)


def predict_volume_slicewise(predictor: Predictor, volume: np.ndarray, mode: str) -> np.ndarray:
    """The original's way: one slice per forward pass (kept for the benchmark and as a reference)."""
    return predictor.predict_volume(volume, mode=mode, batch=1)

