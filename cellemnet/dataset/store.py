"""The patch store: one HDF5 shard per source, written atomically, plus a manifest CSV per output folder.

Shard layout (version 1)::

    /pixels   uint8 1-D    every patch flattened and concatenated (edge patches keep their true size)
    /offsets  int64 (N+1)  patch i is pixels[offsets[i]:offsets[i+1]]
    /shapes   int32 (N, 2) (height, width) of patch i
    /names    vlen utf-8   patch names (see cellemnet.dataset.names)
    /hashes   uint64 (N)   dHash of each patch
    root attrs: format="cellemnet-patches", version=1, metadata=<JSON string>

Optionally a ``/manifest`` group records every patch that was cut from the source, kept or not, with columns
``name``, ``source`` (vlen str), ``hash`` (uint64) and ``duplicate_of`` (vlen str, "" when kept). The folder's
manifest CSV is rebuilt from these groups, so a shard and its manifest rows always travel together.
"""
from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import h5py
import numpy as np

from cellemnet.dataset.names import parse_name
from cellemnet.errors import InputError
from cellemnet.io import atomic_path

FORMAT = "cellemnet-patches"
VERSION = 1
SHARD_SUFFIX = ".h5"
MANIFEST_NAME = "manifest.csv"
SHARD_DATASETS = ("pixels", "offsets", "shapes", "names", "hashes")  # what every shard holds
MANIFEST_COLUMNS = ("name", "source", "axis", "slice", "y0", "y1", "x0", "x1", "hash", "status", "duplicate_of")
KEPT = "kept"
DUPLICATE = "duplicate"

_STR = h5py.string_dtype("utf-8")
_WRITE_BLOCK = 64 << 20


@dataclass
class ShardManifest:
    """Every patch cut from one source: its name, source file, hash and what it duplicates ("" if kept)."""

    names: list[str]
    sources: list[str]
    hashes: np.ndarray
    duplicate_of: list[str]

    def __post_init__(self) -> None:
        self.hashes = np.asarray(self.hashes, dtype=np.uint64)
        n = len(self.names)
        if not (len(self.sources) == len(self.hashes) == len(self.duplicate_of) == n):
            raise ValueError("manifest columns differ in length")

    def __len__(self) -> int:
        return len(self.names)


# ---------------------------------------------------------------------------------------------------- writing


def write_shard(
    path: str | os.PathLike,
    names: Sequence[str],
    patches: Iterable[np.ndarray],
    hashes: Sequence[int] | np.ndarray,
    metadata: dict | None = None,
    *,
    manifest: ShardManifest | None = None,
    shapes: np.ndarray | None = None,
) -> Path:
    """Write a shard atomically (temporary file beside it, then rename). Returns the path.

    ``patches`` are 2D uint8 arrays of any size; ``metadata`` must be JSON-serialisable. When ``shapes``
    ((N, 2) heights and widths) is given, ``patches`` may be any iterable (e.g. a generator cutting them one by
    one), so the patches never need to be in memory all at once.
    """
    path = Path(path)
    names = [str(n) for n in names]
    hashes = np.asarray(hashes, dtype=np.uint64).reshape(-1)
    if shapes is None:
        patches = list(patches)
        shapes = np.array([np.shape(p) for p in patches], dtype=np.int32).reshape(-1, 2) if patches else \
            np.zeros((0, 2), np.int32)
    shapes = np.asarray(shapes, dtype=np.int32).reshape(-1, 2)
    if not (len(names) == len(shapes) == len(hashes)):
        raise ValueError(f"{path}: {len(names)} names, {len(shapes)} patches and {len(hashes)} hashes differ")
    offsets = np.zeros(len(shapes) + 1, dtype=np.int64)
    np.cumsum(shapes[:, 0].astype(np.int64) * shapes[:, 1], out=offsets[1:])
    meta_json = json.dumps(metadata or {}, sort_keys=True)

    with atomic_path(path, suffix=SHARD_SUFFIX) as tmp:
        # track_times=False keeps a re-run byte-for-byte equal to the first run.
        with h5py.File(tmp, "w", track_order=False) as f:
            pixels = f.create_dataset("pixels", shape=(int(offsets[-1]),), dtype=np.uint8, track_times=False)
            _write_pixels(pixels, patches, shapes, offsets, names, path)
            f.create_dataset("offsets", data=offsets, track_times=False)
            f.create_dataset("shapes", data=shapes, track_times=False)
            f.create_dataset("names", data=np.array(names, dtype=object), dtype=_STR, track_times=False)
            f.create_dataset("hashes", data=hashes, track_times=False)
            if manifest is not None:
                g = f.create_group("manifest", track_order=False)
                kw = dict(track_times=False, compression="gzip", shuffle=True) if len(manifest) else {}
                g.create_dataset("name", data=np.array(manifest.names, dtype=object), dtype=_STR, **kw)
                g.create_dataset("source", data=np.array(manifest.sources, dtype=object), dtype=_STR, **kw)
                g.create_dataset("hash", data=manifest.hashes, **kw)
                g.create_dataset("duplicate_of", data=np.array(manifest.duplicate_of, dtype=object), dtype=_STR, **kw)
            f.attrs["format"] = FORMAT
            f.attrs["version"] = VERSION
            f.attrs["metadata"] = meta_json
            f.attrs["has_manifest"] = manifest is not None  # a lost /manifest is damage, not "no manifest"
    return path


def _write_pixels(pixels, patches: Iterable[np.ndarray], shapes, offsets, names, path) -> None:
    """Copy patches into the flat pixel dataset in blocks of ~64 MiB (few large writes, bounded memory)."""
    buffer: list[np.ndarray] = []
    buffered = 0
    start = 0  # patch index where the buffer begins
    count = 0
    for i, patch in enumerate(patches):
        if i >= len(shapes):
            raise ValueError(f"{path}: more patches than names")
        patch = np.asarray(patch)
        if patch.ndim != 2 or patch.dtype != np.uint8 or tuple(patch.shape) != tuple(shapes[i]):
            raise ValueError(f"{path}: patch {names[i]} is {patch.dtype} {patch.shape}, not 2D uint8 of shape "
                             f"{tuple(int(v) for v in shapes[i])}")
        buffer.append(patch.reshape(-1))
        buffered += patch.size
        count = i + 1
        if buffered >= _WRITE_BLOCK:
            pixels[offsets[start] : offsets[count]] = np.concatenate(buffer)
            buffer, buffered, start = [], 0, count
    if count != len(shapes):
        raise ValueError(f"{path}: {count} patches for {len(shapes)} names")
    if buffered:
        pixels[offsets[start] : offsets[count]] = np.concatenate(buffer)


# ---------------------------------------------------------------------------------------------------- reading


def _open_checked(path: Path) -> h5py.File:
    try:
        f = h5py.File(path, "r")
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable HDF5 patch shard ({exc})") from None
    if f.attrs.get("format") != FORMAT or int(f.attrs.get("version", -1)) != VERSION:
        f.close()
        raise InputError(f"{path}: not a cellemnet patch shard (format/version attributes missing or different)")
    missing = [name for name in SHARD_DATASETS if name not in f]
    if bool(f.attrs.get("has_manifest", False)) and "manifest" not in f:
        missing.append("manifest")
    if missing:
        f.close()
        raise InputError(f"{path}: damaged patch shard: {', '.join('/' + m for m in missing)} missing "
                         "(re-run the step that wrote it)")
    return f


def _read_strings(dataset) -> list[str]:
    if dataset.shape[0] == 0:
        return []
    return [str(s) for s in dataset.asstr()[()]]


def is_complete_shard(path: str | os.PathLike) -> bool:
    """True when ``path`` opens as a shard whose datasets agree with each other (a finished write)."""
    path = Path(path)
    if not path.is_file():
        return False
    try:
        with _open_checked(path) as f:
            n = f["hashes"].shape[0]
            offsets = f["offsets"][()]
            return (
                f["names"].shape[0] == n
                and f["shapes"].shape == (n, 2)
                and offsets.shape == (n + 1,)
                and int(offsets[-1]) == f["pixels"].shape[0]
            )
    except (InputError, KeyError, OSError):
        return False


def is_patch_shard(path: str | os.PathLike) -> bool:
    """True for a file this project wrote as a patch shard (HDF5 with the shard format attribute), damaged or not:
    what curation must never read back as input."""
    path = Path(path)
    if path.suffix.lower() not in (".h5", ".hdf5") or not path.is_file():
        return False
    try:
        with h5py.File(path, "r") as f:
            return f.attrs.get("format") == FORMAT
    except (OSError, ValueError):
        return False


class ShardReader:
    """Lazy access to one shard; the HDF5 file is opened on first use in each process (safe for worker pools).

    ``len(reader)``, ``reader.names``, ``reader.hashes``, ``reader.metadata``, ``reader.read(i)`` (2D uint8).
    Picklable: the open file handle is dropped and reopened in the receiving process.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._file: h5py.File | None = None
        self._pid: int | None = None
        self._offsets: np.ndarray | None = None
        self._shapes: np.ndarray | None = None
        self._names: list[str] | None = None
        self._hashes: np.ndarray | None = None
        self._metadata: dict | None = None
        self._handle()  # fail early, with the file named, on a bad path

    def _handle(self) -> h5py.File:
        if self._file is None or self._pid != os.getpid():
            self._file = _open_checked(self.path)
            self._pid = os.getpid()
            if self._offsets is None:
                self._offsets = self._file["offsets"][()]
                self._shapes = self._file["shapes"][()]
        return self._file

    def __len__(self) -> int:
        self._handle()
        return len(self._offsets) - 1

    @property
    def names(self) -> list[str]:
        if self._names is None:
            self._names = _read_strings(self._handle()["names"])
        return self._names

    @property
    def hashes(self) -> np.ndarray:
        if self._hashes is None:
            self._hashes = self._handle()["hashes"][()].astype(np.uint64)
        return self._hashes

    @property
    def shapes(self) -> np.ndarray:
        self._handle()
        return self._shapes

    @property
    def metadata(self) -> dict:
        if self._metadata is None:
            self._metadata = json.loads(self._handle().attrs.get("metadata", "{}"))
        return self._metadata

    def read(self, i: int) -> np.ndarray:
        f = self._handle()
        n = len(self._offsets) - 1
        if not -n <= i < n:
            raise IndexError(f"patch {i} out of range for {self.path} ({n} patches)")
        i %= n
        flat = f["pixels"][self._offsets[i] : self._offsets[i + 1]]
        return flat.reshape(tuple(self._shapes[i]))

    __getitem__ = read

    def __iter__(self) -> Iterator[np.ndarray]:
        for i in range(len(self)):
            yield self.read(i)

    def read_all(self) -> list[np.ndarray]:
        """Every patch, reading the pixel array once."""
        pixels = self._handle()["pixels"][()]
        return [
            pixels[self._offsets[i] : self._offsets[i + 1]].reshape(tuple(self._shapes[i])) for i in range(len(self))
        ]

    def manifest(self) -> ShardManifest:
        """The shard's manifest group, or (for shards written without one) its own patches, all kept."""
        f = self._handle()
        if "manifest" in f:
            g = f["manifest"]
            return ShardManifest(
                names=_read_strings(g["name"]),
                sources=_read_strings(g["source"]),
                hashes=g["hash"][()],
                duplicate_of=_read_strings(g["duplicate_of"]),
            )
        source = str(self.metadata.get("source", ""))
        return ShardManifest(list(self.names), [source] * len(self), self.hashes.copy(), [""] * len(self))

    def close(self) -> None:
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = None

    def __enter__(self) -> "ShardReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_file"] = None
        state["_pid"] = None
        return state

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


def load_shard(path: str | os.PathLike) -> dict:
    """Everything in a shard, in memory: ``names``, ``patches`` (list of 2D uint8), ``hashes``, ``metadata``."""
    with ShardReader(path) as reader:
        return {
            "names": list(reader.names),
            "patches": reader.read_all(),
            "hashes": reader.hashes.copy(),
            "metadata": dict(reader.metadata),
        }


def list_shards(folder: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """Shard files in ``folder`` sorted by path; temporary files of unfinished writes (hidden) are left out."""
    folder = Path(folder)
    pattern = f"**/*{SHARD_SUFFIX}" if recursive else f"*{SHARD_SUFFIX}"
    return sorted(p for p in folder.glob(pattern) if p.is_file() and not p.name.startswith("."))


def remove_stale_temporaries(folder: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """Delete leftovers of writes that were killed (``.{name}.*.part*`` files, cellemnet.io.atomic_path), in
    `folder` or (recursive) below it. Returns what was removed."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for p in (folder.rglob(".*") if recursive else folder.iterdir()):
        if p.name.startswith(".") and ".part" in p.name and p.is_file():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


# ---------------------------------------------------------------------------------------------------- manifest CSV


def hash_hex(value: int, hash_bits: int = 64) -> str:
    return format(int(value), f"0{(hash_bits + 3) // 4}x")


def manifest_rows(manifest: ShardManifest) -> Iterator[dict]:
    """CSV rows (dicts keyed by MANIFEST_COLUMNS) for one shard's manifest."""
    for name, source, h, dup in zip(manifest.names, manifest.sources, manifest.hashes, manifest.duplicate_of):
        loc = parse_name(name)
        yield {
            "name": name,
            "source": source,
            "axis": "2d" if loc.axis is None else str(loc.axis),
            "slice": "" if loc.slice is None else str(loc.slice),
            "y0": loc.y0,
            "y1": loc.y1,
            "x0": loc.x0,
            "x1": loc.x1,
            "hash": hash_hex(h),
            "status": DUPLICATE if dup else KEPT,
            "duplicate_of": dup,
        }


def write_manifest(path: str | os.PathLike, rows: Iterable[dict]) -> int:
    """Write manifest rows atomically; returns the number of rows."""
    n = 0
    with atomic_path(path, suffix=".csv") as tmp:
        with open(tmp, "w", newline="") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(MANIFEST_COLUMNS)
            for row in rows:
                writer.writerow([row[k] for k in MANIFEST_COLUMNS])
                n += 1
    return n


def read_manifest(path: str | os.PathLike) -> list[dict]:
    """Rows of a manifest CSV as dicts of strings."""
    path = Path(path)
    try:
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            if tuple(reader.fieldnames or ()) != MANIFEST_COLUMNS:
                raise InputError(f"{path}: not a patch manifest (columns {reader.fieldnames})")
            return list(reader)
    except OSError as exc:
        raise InputError(f"{path}: cannot read manifest ({exc.strerror or exc})") from None


def rebuild_folder_manifest(folder: str | os.PathLike, recursive: bool = False,
                            left_out: Iterable[str | os.PathLike] = ()) -> tuple[Path, int]:
    """Rewrite ``folder/manifest.csv`` from the manifests of every shard in it (sorted by shard).

    A damaged shard is an InputError naming it, before anything is written: leaving it out would silently drop
    its rows from the manifest (shards are written atomically, so a visible shard that does not check out is
    damage, not a write in progress). `left_out`: shards the caller has already reported as bad and skips."""
    folder = Path(folder)
    skipped = {Path(p).resolve() for p in left_out}
    shards = [p for p in list_shards(folder, recursive=recursive) if p.resolve() not in skipped]
    for shard in shards:
        if not is_complete_shard(shard):
            ShardReader(shard).close()  # names what is missing, when that is the damage
            raise InputError(f"{shard}: damaged patch shard (its datasets disagree in length; re-run the step "
                             "that wrote it)")

    def rows() -> Iterator[dict]:
        for shard in shards:
            with ShardReader(shard) as reader:
                yield from manifest_rows(reader.manifest())

    out = folder / MANIFEST_NAME
    return out, write_manifest(out, rows())
