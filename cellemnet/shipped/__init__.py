"""The configs shipped with the project, found from a checkout or from an installed wheel.

In a checkout they are the tracked folders (`pretraining/configs`, ...); a wheel carries the same files as package
data of this package (setup.py maps SHIPPED_DIRS onto them; nothing is copied or moved in the tree). `shipped_dir`
is the one place that says where they are; `find_config` lets every command take a shipped config by name
(`mocov2_small.yaml`, `mocov2_small`, or the checkout path `pretraining/configs/mocov2_small.yaml`).

Standard library only: setup.py reads SHIPPED_DIRS from this file before anything is installed.
"""
from __future__ import annotations

import importlib.resources
import os
from pathlib import Path

# package-data folder under cellemnet/shipped/ -> the tracked folder of the checkout it is built from
SHIPPED_DIRS = {
    "pretraining_configs": "pretraining/configs",
    "evaluation_configs": "evaluation/configs",
    "benchmark_configs": "evaluation/benchmark_configs",
}
CONFIG_SUFFIXES = (".yaml", ".yml")
CHECKOUT = Path(__file__).resolve().parents[2]  # the repository root when this file is in a checkout


def shipped_dir(name: str) -> Path:
    """The folder of shipped configs `name` (a SHIPPED_DIRS key): the checkout's folder when this module runs
    from a checkout, else the copy installed with the package."""
    if name not in SHIPPED_DIRS:
        raise KeyError(f"no shipped folder {name!r}; one of {sorted(SHIPPED_DIRS)}")
    checkout = CHECKOUT / SHIPPED_DIRS[name]
    if checkout.is_dir():
        return checkout
    return Path(str(importlib.resources.files(__name__) / name))


def shipped_configs() -> dict[str, Path]:
    """Every shipped config by its checkout path (`pretraining/configs/mocov2.yaml`, ...)."""
    found: dict[str, Path] = {}
    for name, folder in SHIPPED_DIRS.items():
        where = shipped_dir(name)
        if where.is_dir():
            found.update({f"{folder}/{p.name}": p for p in sorted(where.iterdir()) if p.suffix in CONFIG_SUFFIXES})
    return found


def find_config(path: str | os.PathLike) -> Path:
    """`path` when that file exists; else the shipped config it names: a bare file name, with or without
    `.yaml` (`mocov2_small`), or its relative checkout path (`pretraining/configs/mocov2.yaml`, so the commands in
    the READMEs work from any folder and from an installed wheel); else `path` unchanged, for the caller's "config
    file not found" error. A mistyped folder (`my/mocov2.yaml`) is never silently replaced by a shipped file."""
    given = Path(os.path.expanduser(str(path)))
    if given.exists() or given.is_absolute():
        return given
    configs = shipped_configs()
    if given.as_posix() in configs:
        return configs[given.as_posix()]
    if len(given.parts) == 1:
        by_name = {p.name: p for p in configs.values()}  # file names are unique over the folders (tested)
        for candidate in (given.name, given.name + ".yaml"):
            if candidate in by_name:
                return by_name[candidate]
    return given
