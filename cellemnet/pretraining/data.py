"""The curated patches as a training set: a cached file index, a dataset, and a source-balanced DDP sampler.

Layout read (as dataset/classify_patches.py writes it): under `data_path`, image files (.tif/.tiff/.png) at
any depth and/or HDF5 patch shards (.h5/.hdf5, cellemnet.dataset.store layout). The *source* of a patch is the
first path component below data_path (the per-dataset folder); a shard lying directly in data_path is its own
source; loose images directly in data_path form one source named ".".

16-bit (or float) patches are brought to uint8 with cellemnet.io.to_uint8 (robust percentile rescale per patch),
so the EM normalisation, fitted on 8-bit data, applies to every patch.

The index (`<model_dir>/data_index.json`) is rebuilt only when data_path or one of its top-level entries has a
new modification time (or on rebuild_index=true): a million-file tree is walked once, not at every start.
Adding files deep inside an existing source folder does not touch those mtimes - use rebuild_index=true then.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from cellemnet.dataset.store import ShardReader
from cellemnet.errors import InputError
from cellemnet.io import atomic_write_text, read_image, to_uint8

IMAGE_SUFFIXES = (".tif", ".tiff", ".png")
SHARD_SUFFIXES = (".h5", ".hdf5")
INDEX_NAME = "data_index.json"
INDEX_VERSION = 1
ROOT_SOURCE = "."


def _signature(data_path: Path) -> dict[str, int]:
    """Modification times of data_path and its top-level entries: cheap to read, changes when sources change."""
    sig = {".": data_path.stat().st_mtime_ns}
    with os.scandir(data_path) as it:
        for entry in it:
            if not entry.name.startswith("."):
                sig[entry.name] = entry.stat().st_mtime_ns
    return sig


def _source_of(rel: Path, is_shard: bool) -> str:
    if len(rel.parts) > 1:
        return rel.parts[0]
    return rel.stem if is_shard else ROOT_SOURCE


def _check_float_tiff(path: Path) -> None:
    """A float TIFF with NaN or inf stops the run when the data is indexed, naming the file, not mid-epoch.
    Only the header is read for the usual integer patches (PNG and shards are integer by format)."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            if tif.pages[0].dtype is None or tif.pages[0].dtype.kind != "f":
                return
            data = tif.asarray()
    except Exception as exc:
        raise InputError(f"{path}: cannot read patch ({exc.__class__.__name__}: {exc})") from None
    if not np.all(np.isfinite(data)):
        raise InputError(f"{path}: contains NaN or infinite values; fix or remove the patch")


def scan_data(data_path: str | os.PathLike) -> dict[str, Any]:
    """Walk data_path once: {"files": [[source, relpath], ...], "shards": [[source, relpath, count], ...]}."""
    data_path = Path(data_path)
    files: list[list[str]] = []
    shards: list[list[Any]] = []
    for dirpath, dirnames, filenames in os.walk(data_path):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            suffix = os.path.splitext(name)[1].lower()
            rel = Path(dirpath, name).relative_to(data_path)
            if suffix in IMAGE_SUFFIXES:
                if suffix in (".tif", ".tiff"):
                    _check_float_tiff(data_path / rel)
                files.append([_source_of(rel, False), rel.as_posix()])
            elif suffix in SHARD_SUFFIXES:
                try:
                    count = len(ShardReader(data_path / rel))
                except Exception as exc:
                    raise InputError(f"{data_path / rel}: not a readable patch shard ({exc})") from None
                if count:
                    shards.append([_source_of(rel, True), rel.as_posix(), int(count)])
    if not files and not shards:
        raise InputError(f"{data_path}: no patches found (.tif/.tiff/.png files or .h5 shards, at any depth)")
    return {"files": files, "shards": shards}


def load_index(data_path: str | os.PathLike, index_path: str | os.PathLike, rebuild: bool = False) -> dict[str, Any]:
    """The cached index of data_path, re-scanned only when the signature changed (written atomically)."""
    data_path = Path(data_path).resolve()
    index_path = Path(index_path)
    signature = _signature(data_path)
    if index_path.is_file() and not rebuild:
        try:
            cached = json.loads(index_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            cached = None
        if (
            isinstance(cached, dict)
            and cached.get("version") == INDEX_VERSION
            and cached.get("data_path") == str(data_path)
            and cached.get("signature") == signature
        ):
            return cached
    scanned = scan_data(data_path)
    index = {"version": INDEX_VERSION, "data_path": str(data_path), "signature": signature, **scanned}
    atomic_write_text(index_path, json.dumps(index))
    return index


def item_sources(index: dict[str, Any]) -> tuple[list[str], np.ndarray]:
    """(source names, per-item source id) in dataset order: files first, then shard patches."""
    names: dict[str, int] = {}
    ids = [names.setdefault(src, len(names)) for src, _ in index["files"]]
    shard_ids = [np.full(count, names.setdefault(src, len(names)), dtype=np.int64) for src, _, count in index["shards"]]
    all_ids = np.concatenate([np.asarray(ids, dtype=np.int64), *shard_ids]) if shard_ids else np.asarray(ids, np.int64)
    return list(names), all_ids


def source_weights(source_ids: np.ndarray, gamma: float) -> np.ndarray:
    """Per-item sampling probabilities: (1/n_source)^gamma, normalised; a source's share grows like n^(1-gamma)."""
    counts = np.bincount(source_ids)
    per_item = counts[source_ids].astype(np.float64) ** (-gamma)
    return per_item / per_item.sum()


def read_patch(path: str | os.PathLike) -> np.ndarray:
    """A 2D uint8 patch from an image file (16-bit and float are rescaled with cellemnet.io.to_uint8)."""
    try:
        image = read_image(path)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{path}: cannot read patch ({exc.__class__.__name__}: {exc})") from None
    if image.ndim != 2:
        raise InputError(f"{path}: expected a 2D grayscale patch, got shape {image.shape}")
    return image if image.dtype == np.uint8 else to_uint8(image, name=str(path))


class PatchDataset:
    """Map-style dataset over an index; item i -> transform(uint8 tensor of shape (1, H, W))."""

    def __init__(self, data_path: str | os.PathLike, index: dict[str, Any], transform: Callable | None = None):
        self.data_path = Path(data_path)
        # One bytes array instead of a list of str: DataLoader workers then share it without copy-on-write
        # growth (touching Python objects' refcounts copies their pages into every worker).
        self.files = np.array([rel.encode() for _, rel in index["files"]], dtype=np.bytes_)
        self.shard_paths = [self.data_path / rel for _, rel, _ in index["shards"]]
        counts = [count for _, _, count in index["shards"]]
        self.shard_starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64) + len(self.files)
        self.transform = transform
        self._readers: dict[int, Any] = {}  # opened lazily, per process (h5py handles do not survive fork)

    def __len__(self) -> int:
        return int(self.shard_starts[-1])

    def read(self, i: int) -> np.ndarray:
        if i < len(self.files):
            return read_patch(self.data_path / self.files[i].decode())
        s = int(np.searchsorted(self.shard_starts, i, side="right")) - 1
        if s not in self._readers:
            self._readers[s] = ShardReader(self.shard_paths[s])
        return self._readers[s].read(int(i - self.shard_starts[s]))

    def __getitem__(self, item):
        """item: an index, or (index, seed words) from SourceBalancedSampler: the augmentation then draws from a
        torch stream seeded by those words alone (the same views in any worker, and after a resume)."""
        import torch

        i, words = (item if isinstance(item, tuple) else (item, None))
        patch = torch.from_numpy(np.ascontiguousarray(self.read(int(i))))[None]
        if self.transform is None:
            return patch
        if words is None:
            return self.transform(patch)
        from cellemnet.runtime import seed_from_words  # lazy: cellemnet.runtime imports torch

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed_from_words(*words))
            return self.transform(patch)


class SourceBalancedSampler:
    """Distributed sampler that balances sources, is reseeded per epoch and can start mid-epoch.

    Each epoch one global draw of `num_samples * world_size` indices is made from a generator seeded by
    (seed, epoch) - weighted with replacement when `weights` is given, a plain permutation otherwise - and rank r
    takes positions r, r + world_size, ...: every rank sees a distinct part of the same epoch. `set_epoch(e,
    start_index=k)` skips the first k indices of this rank's part (resume after k samples). Each item is
    (index, (seed, epoch, position in the global draw)): the seed words of its augmentation (PatchDataset).
    """

    def __init__(self, num_items: int, weights: np.ndarray | None = None, rank: int = 0, world_size: int = 1,
                 seed: int = 0):
        if num_items < world_size:
            raise InputError(f"only {num_items} patches for {world_size} processes")
        self.num_items = num_items
        self.weights = weights
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.num_samples = num_items // world_size  # per rank; the global remainder is dropped
        self.epoch = 0
        self.start_index = 0

    def set_epoch(self, epoch: int, start_index: int = 0) -> None:
        self.epoch = epoch
        self.start_index = start_index

    def global_draw(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, epoch])
        total = self.num_samples * self.world_size
        if self.weights is None:
            return rng.permutation(self.num_items)[:total]
        return rng.choice(self.num_items, size=total, replace=True, p=self.weights)

    def rank_indices(self, epoch: int) -> np.ndarray:
        return self.global_draw(epoch)[self.rank :: self.world_size]

    def __iter__(self):
        indices = self.rank_indices(self.epoch).tolist()
        for k in range(self.start_index, len(indices)):
            yield indices[k], (self.seed, self.epoch, self.rank + k * self.world_size)

    def __len__(self) -> int:
        return self.num_samples - self.start_index

    def state(self) -> dict[str, int]:
        return {"seed": self.seed, "epoch": self.epoch, "start_index": self.start_index}


def build_dataset(cfg: dict[str, Any], transform: Callable) -> tuple[PatchDataset, np.ndarray | None, list[str]]:
    """Dataset, per-item weights (None when weight_gamma is null) and source names from a validated config."""
    index = load_index(cfg["data_path"], Path(cfg["model_dir"]) / INDEX_NAME, rebuild=cfg["rebuild_index"])
    dataset = PatchDataset(cfg["data_path"], index, transform)
    names, ids = item_sources(index)
    weights = None if cfg["weight_gamma"] is None else source_weights(ids, cfg["weight_gamma"])
    return dataset, weights, names


def source_shares(indices: Sequence[int], source_ids: np.ndarray) -> np.ndarray:
    """Fraction of the draws that fell in each source (for tests and reports)."""
    counts = np.bincount(source_ids[np.asarray(indices)], minlength=int(source_ids.max()) + 1)
    return counts / counts.sum()
