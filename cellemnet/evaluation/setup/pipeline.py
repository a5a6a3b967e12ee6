"""Download and convert benchmarks under one data root, resumably.

Each dataset is converted in a hidden staging folder and moved into place only when complete, with a marker file
(`.cellemnet-setup.json`) holding what was made and from which files. A dataset whose marker exists is skipped, so
an interrupted run resumes where it stopped; a folder without a marker is never overwritten (it may be the user's
own data) unless `force` is given. Downloads are kept in `{root}/downloads/` with a checksum registry. What each
dataset downloads and how it is converted is its benchmark module's (cellemnet/evaluation/benchmarks/).
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Callable

from cellemnet.errors import InputError
from cellemnet.evaluation import benchmarks
from cellemnet.evaluation.setup.download import ChecksumRegistry, fetch
from cellemnet.io import atomic_write_text

MARKER = ".cellemnet-setup.json"
DOWNLOADS = "downloads"
REGISTRY = "checksums.json"


def is_complete(folder: Path) -> bool:
    return (folder / MARKER).is_file()


def download_dataset(name: str, downloads: Path, registry: ChecksumRegistry, progress: bool = True) -> list[str]:
    """Fetch (or verify) every file of one dataset; returns one line per file saying what happened."""
    lines = []
    for remote in benchmarks.dataset(name).sources:
        path, what = fetch(remote, downloads, registry=registry, progress=progress)
        lines.append(f"{path.name}: {what}")
    return lines


def convert_dataset(name: str, data_root: Path, downloads: Path, force: bool = False) -> dict:
    """Convert one dataset into data_root/name through a staging folder. Returns its counts."""
    dataset = benchmarks.dataset(name)
    out = data_root / name
    if out.exists() and not is_complete(out) and not force:
        raise InputError(f"{out} exists but was not made by a complete setup run; move it away or pass --force")
    for needed in dataset.needs:
        if not is_complete(data_root / needed):
            raise InputError(f"{name} is built from {', '.join(dataset.needs)}; {data_root / needed} is not set up yet")
    staging = data_root / f".staging-{name}"
    shutil.rmtree(staging, ignore_errors=True)
    work = data_root / f".work-{name}"
    shutil.rmtree(work, ignore_errors=True)
    try:
        counts = dataset.convert(downloads, data_root, staging, work)
        sources = [r.filename for r in dataset.sources]
        marker = {"dataset": name, "made": time.strftime("%Y-%m-%dT%H:%M:%S"), "sources": sources, "counts": counts}
        atomic_write_text(staging / MARKER, json.dumps(marker, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(staging, ignore_errors=True)
    return counts


def setup_datasets(
    names: list[str],
    data_root: Path,
    download: bool = True,
    force: bool = False,
    keep_downloads: bool = True,
    progress: bool = True,
    log: Callable[[str], None] = print,
    convert_data: bool = True,
) -> dict[str, dict]:
    """Download (unless `download` is False: then the files must already be in downloads/) and convert datasets.

    With convert_data False the files are only fetched and checked (to convert later, e.g. on another machine).
    """
    data_root.mkdir(parents=True, exist_ok=True)
    downloads = data_root / DOWNLOADS
    registry = ChecksumRegistry(downloads / REGISTRY)
    summary: dict[str, dict] = {}
    for name in names:
        out = data_root / name
        if is_complete(out) and not force:
            log(f"{name}: already set up in {out}, skipping")
            summary[name] = {"status": "present"}
            continue
        remotes = benchmarks.dataset(name).sources
        if not download:
            for remote in remotes:
                if not (downloads / remote.filename).is_file():
                    raise InputError(f"{downloads / remote.filename}: not found; download {remote.url} and save it "
                                     "there, or run without --no-download")
        for line in download_dataset(name, downloads, registry, progress):  # present files are only verified
            log(f"{name}: {line}")
        if not convert_data:
            summary[name] = {"status": "downloaded"}
            continue
        log(f"{name}: converting ...")
        counts = convert_dataset(name, data_root, downloads, force=force)
        summary[name] = {"status": "converted", **counts}
        if not keep_downloads:
            for remote in remotes:
                (downloads / remote.filename).unlink(missing_ok=True)
    return summary
