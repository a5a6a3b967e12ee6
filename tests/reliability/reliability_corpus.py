"""The bad-input corpus: files a demanding user (or a broken disk) hands to CellEMNet's commands.

`make_corpus(root)` writes every kind once - corrupt, truncated, empty, wrong-type, NaN, huge-header, symlinked
and non-ASCII files; damaged shards and manifests; bad configs; wrong and malicious weight files - beside a few
good inputs, so each case can check that the good ones still finish. Nothing here is random at run time.
"""
from __future__ import annotations

import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cellemnet.io import write_image, write_volume


def huge_header_tiff(path: Path, side: int = 1_000_000) -> Path:
    """A valid little-endian TIFF whose header claims a side x side 8-bit image (931 GiB) over 16 bytes of data."""
    entries = [(256, 4, 1, side), (257, 4, 1, side), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
               (273, 4, 1, 8), (277, 3, 1, 1), (278, 4, 1, side), (279, 4, 1, 16)]
    ifd_offset = 8 + 16
    out = b"II*\x00" + struct.pack("<I", ifd_offset) + bytes(16)
    out += struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        out += struct.pack("<HHII", tag, kind, count, value) if kind == 4 else \
            struct.pack("<HHIHH", tag, kind, count, value, 0)
    out += struct.pack("<I", 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(out)
    return path


def huge_header_nrrd(path: Path) -> Path:
    """An NRRD whose header claims 100000^3 voxels over a few bytes of raw data."""
    header = ("NRRD0004\ntype: uint8\ndimension: 3\nsizes: 100000 100000 100000\nencoding: raw\n\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header.encode() + bytes(64))
    return path


class _RunsCode:
    """Unpickling this calls exec: a malicious weights file. Loading must never get that far."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",)


def malicious_pickle(path: Path, marker: Path) -> Path:
    """A .pth that runs code when loaded with plain pickle (torch.load(weights_only=False) would)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    import torch

    torch.save({"state_dict": _RunsCode(marker)}, path)
    return path


def _smooth(shape, seed: int) -> np.ndarray:
    """EM-like smooth texture (dedup keeps distinct patches of it)."""
    from cellemnet.synthetic import make_image, make_volume

    if len(shape) == 2:
        return make_image(shape, seed=seed)[0]
    return make_volume(shape, seed=seed)[0]


@dataclass
class Corpus:
    root: Path
    images: Path  # 2D image groups: good/ (incl. a non-ASCII name) and bad/ (every kind of broken file)
    good_images: list[str]
    bad_images: list[str]
    volumes: Path  # 3D volumes: good ones (incl. a non-ASCII name) and broken ones
    good_volumes: list[str]
    bad_volumes: list[str]
    random_bytes: Path  # a .pth of random bytes
    malicious: Path  # a .pth that runs code when unpickled
    marker: Path  # what the malicious file would create
    pretraining_ckpt: Path  # looks like a MoCoV2 pretraining checkpoint
    finetune_ckpt: Path  # looks like a fine-tuning checkpoint
    bad_yaml: Path
    duplicate_key_yaml: Path


def make_corpus(root: Path) -> Corpus:
    import torch

    root = Path(root)
    images = root / "images"
    good_images = ["good/a.png", "good/b.tif", "good/ünïcødé ïmage.png"]
    for i, rel in enumerate(good_images):
        write_image(images / rel, _smooth((320, 320), seed=10 + i))
    bad = images / "bad"
    bad.mkdir(parents=True)
    (bad / "corrupt.tif").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    good_bytes = (images / "good" / "b.tif").read_bytes()
    (bad / "truncated.tif").write_bytes(good_bytes[: len(good_bytes) // 3])
    (bad / "empty.png").write_bytes(b"")
    (bad / "text.png").write_text("this is not an image\n")
    write_image(bad / "nan.tif", np.full((320, 320), np.nan, np.float32))
    huge_header_tiff(bad / "huge.tif")
    (bad / "dangling.png").symlink_to(bad / "missing.png")
    bad_images = ["bad/corrupt.tif", "bad/truncated.tif", "bad/empty.png", "bad/text.png", "bad/nan.tif",
                  "bad/huge.tif", "bad/dangling.png"]

    volumes = root / "volumes"
    good_volumes = ["good.nrrd", "ünï vølume.tif"]
    for i, rel in enumerate(good_volumes):
        write_volume(volumes / rel, _smooth((12, 160, 160), seed=20 + i))
    (volumes / "corrupt.nrrd").write_bytes(b"NRRD0004\nsizes: what\n\n" + bytes(100))
    tif_bytes = (volumes / good_volumes[1]).read_bytes()
    (volumes / "truncated.tif").write_bytes(tif_bytes[: len(tif_bytes) // 4])
    nan = _smooth((12, 160, 160), seed=30).astype(np.float32)
    nan[3] = np.nan
    write_volume(volumes / "nan.nrrd", nan)
    (volumes / "empty.mrc").write_bytes(b"")
    huge_header_nrrd(volumes / "huge.nrrd")
    (volumes / "dangling.nrrd").symlink_to(volumes / "missing.nrrd")
    bad_volumes = ["corrupt.nrrd", "truncated.tif", "nan.nrrd", "empty.mrc", "huge.nrrd", "dangling.nrrd"]

    weights = root / "weights"
    weights.mkdir()
    random_bytes = weights / "random.pth"
    random_bytes.write_bytes(np.random.default_rng(1).integers(0, 256, 2048, dtype=np.uint8).tobytes())
    marker = root / "PWNED"
    malicious = malicious_pickle(weights / "malicious.pth", marker)
    pretraining_ckpt = weights / "current.pth"
    torch.save({"method": "mocov2", "arch": "resnet18", "epoch": 1, "iteration": 0, "global_step": 3,
                "state_dict": {"w": torch.zeros(1)}, "optimizer": {"state": {}, "param_groups": []}}, pretraining_ckpt)
    finetune_ckpt = weights / "finetuned.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "optimizer": {}, "scheduler": {}, "config": {},
                "norms": {"mean": [0.5], "std": [0.2]}, "step": 1, "total": 2}, finetune_ckpt)

    configs = root / "configs"
    configs.mkdir()
    bad_yaml = configs / "broken.yaml"
    bad_yaml.write_text("epochs: 3\nlr: [0.1\n")
    duplicate_key_yaml = configs / "duplicate.yaml"
    duplicate_key_yaml.write_text("epochs: 3\nlr: 0.1\nepochs: 4\n")
    return Corpus(root, images, good_images, bad_images, volumes, good_volumes, bad_volumes, random_bytes,
                  malicious, marker, pretraining_ckpt, finetune_ckpt, bad_yaml, duplicate_key_yaml)


def damage_shard(shard: Path, how: str) -> Path:
    """Damage an HDF5 patch shard in place: 'truncate', 'no-names' (drop /names and /offsets), 'no-manifest'."""
    import h5py

    if how == "truncate":
        data = shard.read_bytes()
        shard.write_bytes(data[: len(data) // 2])
    else:
        with h5py.File(shard, "a") as f:
            for key in {"no-names": ("names", "offsets"), "no-manifest": ("manifest",)}[how]:
                if key in f:
                    del f[key]
    return shard


def tree(folder: Path) -> dict[str, int]:
    """Every file below folder with its size: what 'nothing outside the output was written' compares."""
    return {p.relative_to(folder).as_posix(): (p.lstat().st_size if p.is_symlink() else p.stat().st_size)
            for p in sorted(folder.rglob("*")) if p.is_file() or p.is_symlink()}


def copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst
