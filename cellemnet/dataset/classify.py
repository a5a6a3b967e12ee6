"""From de-duplicated patch shards to the final curated dataset: score every patch, keep the informative ones.

Output (SAVEDIR):
- tiff (default): ``{dataset}/{patch name}.tiff``, 8-bit grayscale. Every ``-ROI-`` shard of one dataset goes
  to the same folder (the original skipped every ROI after the first, because an existing folder meant "done").
- h5: ``{dataset}/{shard stem}.h5`` in the patch-store format (cellemnet.dataset.store), kept patches only.
- ``filter_manifest.csv``: one row per scored patch (kept or dropped) with its score and decision.
- ``.classify/``: one finished-shard record per input shard and the filter settings. A re-run skips shards
  with a record; a run killed half-way redoes only the unfinished shard, and finished outputs are never rewritten.
"""
from __future__ import annotations

import csv
import io as _io
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from cellemnet.dataset.names import dataset_name
from cellemnet.dataset.quality import make_scorer, resolve_method
from cellemnet.dataset.store import ShardReader, is_complete_shard, list_shards, remove_stale_temporaries, write_shard
from cellemnet.errors import ConfigError, InputError
from cellemnet.io import atomic_write_text, check_writable, write_image
from cellemnet.safepath import is_within

FORMATS = ("tiff", "h5")
MANIFEST_NAME = "filter_manifest.csv"
STATE_DIR = ".classify"
SETTINGS_NAME = "settings.json"
MANIFEST_COLUMNS = ("name", "dataset", "shard", "score", "decision", "output")
KEEP, DROP = "keep", "drop"


@dataclass
class ClassifyResult:
    n_shards: int = 0
    n_shards_skipped: int = 0
    n_shards_empty: int = 0
    n_patches: int = 0
    n_kept: int = 0
    per_dataset: dict[str, dict[str, int]] = field(default_factory=dict)
    manifest: Path | None = None
    seconds: float = 0.0
    scored_this_run: int = 0

    @property
    def n_dropped(self) -> int:
        return self.n_patches - self.n_kept


def shard_dataset(shard: Path) -> str:
    """The dataset of a shard: its stem with any ``-ROI-...`` part removed."""
    return dataset_name(shard.name[: -len(shard.suffix)] if shard.suffix else shard.name)


def find_shards(sharddir: str | os.PathLike, exclude: str | os.PathLike | None = None) -> list[Path]:
    """Every shard under SHARDDIR (sorted), leaving out anything inside `exclude` (SAVEDIR may sit inside)."""
    sharddir = Path(sharddir)
    if not sharddir.is_dir():
        raise InputError(f"{sharddir}: shard folder not found")
    if exclude is not None and is_within(sharddir, exclude, or_equal=True):
        raise InputError(f"{exclude}: the output folder is (or holds) the shard folder {sharddir}; outputs "
                         "must not mix with inputs: give another SAVEDIR (a subfolder of SHARDDIR is fine)")
    shards = list_shards(sharddir, recursive=True)
    if exclude is not None:
        shards = [s for s in shards if not is_within(s, exclude)]
    if not shards:
        raise InputError(f"{sharddir}: no patch shards (*.h5) found")
    return shards


def open_checked_shard(path: Path):
    """A ShardReader, after checking the file is a complete shard; errors name the file."""
    if path.stat().st_size == 0:
        raise InputError(f"{path}: shard file is empty (0 bytes)")
    reader = ShardReader(path)  # raises InputError naming the file when unreadable or not a shard
    if not is_complete_shard(path):
        reader.close()
        raise InputError(f"{path}: shard is incomplete or corrupt (datasets disagree in length)")
    return reader


def _state_key(shard: Path, sharddir: Path) -> str:
    rel = shard.resolve().relative_to(sharddir.resolve())
    return "__".join(rel.parts)


def _read_csv_rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _rows_csv(rows: list[dict]) -> str:
    buf = _io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def check_settings(savedir: Path, settings: dict) -> None:
    """SAVEDIR keeps the filter settings it was made with; a re-run with other settings must use a new folder."""
    path = savedir / STATE_DIR / SETTINGS_NAME
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"{path}: unreadable classify settings ({exc})") from None
        if old != settings:
            diff = {k: (old.get(k), settings.get(k)) for k in set(old) | set(settings) if old.get(k) != settings.get(k)}
            raise ConfigError(f"{savedir} was made with other filter settings {diff} (old, new); "
                              f"use a new SAVEDIR or the same settings to resume")
        return
    atomic_write_text(path, json.dumps(settings, indent=2, sort_keys=True))


def _batches(reader, batch_size: int) -> Iterator[tuple[int, list[np.ndarray]]]:
    n = len(reader)
    for start in range(0, n, batch_size):
        yield start, [reader.read(i) for i in range(start, min(start + batch_size, n))]


def _prefetched(iterator: Iterator, pool: ThreadPoolExecutor) -> Iterator:
    """Yield items of `iterator`, reading the next one in `pool` while the caller works on the current one."""
    future = pool.submit(next, iterator, None)
    while True:
        item = future.result()
        if item is None:
            return
        future = pool.submit(next, iterator, None)
        yield item


def _write_tiff(path: Path, patch: np.ndarray) -> None:
    if not path.exists():  # finished files are complete (atomic writes): keep them
        write_image(path, patch)


def classify_shard(reader, shard: Path, dataset: str, savedir: Path, scorer, fmt: str, batch_size: int,
                   writer_pool: ThreadPoolExecutor, reader_pool: ThreadPoolExecutor,
                   on_batch: Callable[[int], None] | None = None) -> list[dict]:
    """Score every patch of one shard and write the kept ones; returns its manifest rows."""
    names = reader.names
    hashes = reader.hashes
    out_dir = savedir / dataset
    rows: list[dict] = []
    kept_names, kept_patches, kept_hashes = [], [], []
    pending = []
    h5_out = out_dir / f"{shard.stem}.h5"
    for start, patches in _prefetched(_batches(reader, batch_size), reader_pool):
        scores = scorer.score(patches)
        for j, (patch, score) in enumerate(zip(patches, scores)):
            i = start + j
            keep = bool(score > scorer.threshold)
            output = ""
            if keep:
                if fmt == "tiff":
                    target = out_dir / f"{names[i]}.tiff"
                    pending.append(writer_pool.submit(_write_tiff, target, patch))
                    output = str(target.relative_to(savedir))
                else:
                    kept_names.append(names[i])
                    kept_patches.append(patch)
                    kept_hashes.append(hashes[i])
                    output = f"{h5_out.relative_to(savedir)}::{names[i]}"
            rows.append({"name": names[i], "dataset": dataset, "shard": shard.name, "score": f"{score:.6f}",
                         "decision": KEEP if keep else DROP, "output": output})
        if on_batch is not None:
            on_batch(len(patches))
    for fut in pending:
        fut.result()  # surface write errors before the shard counts as done
    if fmt == "h5" and kept_names:
        meta = dict(reader.metadata)
        meta["filter"] = {"source_shard": shard.name, "method": scorer.method, "threshold": scorer.threshold,
                          "n_scored": len(names), "n_kept": len(kept_names)}
        write_shard(h5_out, kept_names, kept_patches, np.asarray(kept_hashes, dtype=np.uint64), meta)
    return rows


def _checked_sizes(shards: list[Path]) -> dict[Path, int]:
    """Patches per shard, every shard opened and checked before anything is written: a bad file stops the run at
    once, naming it."""
    sizes = {}
    for shard in shards:
        reader = open_checked_shard(shard)
        sizes[shard] = len(reader)
        reader.close()
    return sizes


def classify_patches(sharddir: str | os.PathLike, savedir: str | os.PathLike, weights=None,
                     method: str | None = None, threshold: float = 0.5, batch_size: int = 128, workers: int = 1,
                     fmt: str = "tiff", device: str = "auto", progress: bool = True,
                     log: Callable[[str], None] = print) -> ClassifyResult:
    """Score every patch of every shard in SHARDDIR and write the final dataset into SAVEDIR (see module doc)."""
    from tqdm import tqdm

    t0 = time.perf_counter()
    if fmt not in FORMATS:
        raise ConfigError(f"unknown output format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if batch_size < 1 or workers < 1:
        raise ConfigError("--batch-size and -p must be >= 1")
    sharddir, savedir = Path(sharddir), Path(savedir)
    method = resolve_method(weights, method)
    shards = find_shards(sharddir, exclude=savedir)
    sizes = _checked_sizes(shards)

    weights_id = None if weights is None else str(weights)
    if weights_id is not None and not weights_id.startswith(("http://", "https://")):
        weights_id = str(Path(weights_id).resolve())  # the same file named two ways is the same setting
    settings = {"method": method, "weights": weights_id,
                "threshold": float(threshold), "format": fmt}
    # Load the model before SAVEDIR records any settings: bad weights must not lock the folder.
    scorer = make_scorer(weights, method, device=device, batch_size=batch_size, workers=workers,
                         threshold=threshold)

    check_writable(savedir, "curated dataset")  # before any patch is scored
    check_settings(savedir, settings)

    remove_stale_temporaries(savedir, recursive=True)  # half-written files of a killed run never stay
    state_dir = savedir / STATE_DIR
    result = ClassifyResult(n_shards=len(shards))
    todo = []
    for shard in shards:
        done = state_dir / f"{_state_key(shard, sharddir)}.csv"
        if done.is_file() and len(_read_csv_rows(done)) == sizes[shard]:
            result.n_shards_skipped += 1
        else:
            todo.append((shard, done))
    if result.n_shards_skipped:
        log(f"{result.n_shards_skipped} of {len(shards)} shards already done in {savedir}: skipped")

    total = sum(sizes[s] for s, _ in todo)
    bar = tqdm(total=total, unit="patch", desc="classify", disable=not progress or total == 0)
    with ThreadPoolExecutor(max_workers=workers) as writer_pool, ThreadPoolExecutor(max_workers=1) as reader_pool:
        for shard, done in todo:
            if sizes[shard] == 0:
                log(f"warning: {shard} holds no patches")
                result.n_shards_empty += 1
                atomic_write_text(done, _rows_csv([]))
                continue
            reader = open_checked_shard(shard)
            try:
                rows = classify_shard(reader, shard, shard_dataset(shard), savedir, scorer, fmt, batch_size,
                                      writer_pool, reader_pool, on_batch=bar.update)
            except (OSError, KeyError, ValueError) as exc:  # h5py read errors inside a shard
                raise InputError(f"{shard}: cannot read patches ({exc})") from None
            finally:
                reader.close()
            atomic_write_text(done, _rows_csv(rows))
            result.scored_this_run += len(rows)
    bar.close()

    _write_final_manifest(result, [state_dir / f"{_state_key(s, sharddir)}.csv" for s in shards], savedir)
    result.seconds = time.perf_counter() - t0
    return result


def _write_final_manifest(result: ClassifyResult, shard_records: list[Path], savedir: Path) -> None:
    """SAVEDIR's manifest: every shard's rows (this run's and earlier runs'), and the counts in `result`."""
    all_rows: list[dict] = []
    for record in shard_records:
        all_rows.extend(_read_csv_rows(record))
    manifest = savedir / MANIFEST_NAME
    atomic_write_text(manifest, _rows_csv(all_rows))
    for row in all_rows:
        counts = result.per_dataset.setdefault(row["dataset"], {"scored": 0, "kept": 0})
        counts["scored"] += 1
        counts["kept"] += row["decision"] == KEEP
    result.n_patches = len(all_rows)
    result.n_kept = sum(c["kept"] for c in result.per_dataset.values())
    result.manifest = manifest
