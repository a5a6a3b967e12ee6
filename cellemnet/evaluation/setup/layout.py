"""Where each benchmark lives under the one data root.

The data root is `--data-root` on the command line, else the CELLEMNET_DATA_ROOT environment variable. Configs
never hold machine paths: the training and test folders below are relative to the root (the original setup wrote
absolute paths into the tracked YAML files instead).
"""
from __future__ import annotations

import os
from pathlib import Path

from cellemnet.errors import ConfigError
from cellemnet.evaluation.config import DATA_ROOT_ENV, configured_data_root

# The ten benchmarks of the paper: training folder (with train/{images,masks}, optional valid/) and test folder.
# `test_dim` says which inference reads the test folder: 2d images, 3d volumes, or the all_mito mix.
BENCHMARK_LAYOUT: dict[str, dict[str, str]] = {
    "all_mito": {"data_dir": "all_mito", "test_dir": "all_mito/test", "test_dim": "mixed"},
    "cremi": {"data_dir": "cremi/2d", "test_dir": "cremi/3d/test", "test_dim": "3d"},
    "guay": {"data_dir": "guay/2d", "test_dir": "guay/3d/test", "test_dim": "3d"},
    "kasthuri_pp": {"data_dir": "kasthuri_pp", "test_dir": "kasthuri_pp/test", "test_dim": "2d"},
    "lucchi_pp": {"data_dir": "lucchi_pp", "test_dir": "lucchi_pp/test", "test_dim": "2d"},
    "perez_lyso": {"data_dir": "perez/lyso", "test_dir": "perez/lyso/test", "test_dim": "2d"},
    "perez_mito": {"data_dir": "perez/mito", "test_dir": "perez/mito/test", "test_dim": "2d"},
    "perez_nuclei": {"data_dir": "perez/nuclei", "test_dir": "perez/nuclei/test", "test_dim": "2d"},
    "perez_nucleoli": {"data_dir": "perez/nucleoli", "test_dir": "perez/nucleoli/test", "test_dim": "2d"},
    "urocell": {"data_dir": "urocell/2d", "test_dir": "urocell/3d/test", "test_dim": "3d"},
}
BENCHMARKS = tuple(BENCHMARK_LAYOUT)

# Downloads (one folder each under the root) and the benchmarks each one feeds; all_mito is built from the others.
DATASETS = ("lucchi_pp", "kasthuri_pp", "perez", "guay", "urocell", "cremi", "all_mito")
DATASET_OF_BENCHMARK = {
    "all_mito": "all_mito",
    "cremi": "cremi",
    "guay": "guay",
    "kasthuri_pp": "kasthuri_pp",
    "lucchi_pp": "lucchi_pp",
    "perez_lyso": "perez",
    "perez_mito": "perez",
    "perez_nuclei": "perez",
    "perez_nucleoli": "perez",
    "urocell": "urocell",
}
# all_mito needs these converted first.
ALL_MITO_INPUTS = ("perez", "lucchi_pp", "kasthuri_pp", "urocell", "guay")

# Perez organelle folder in the CHM archive -> our short name.
PEREZ_ORGANELLES = {"mitochondria": "mito", "lysosomes": "lyso", "nuclei": "nuclei", "nucleoli": "nucleoli"}


def resolve_data_root(data_root: str | os.PathLike | None = None) -> Path:
    """The data root: the argument when given, else $CELLEMNET_DATA_ROOT; a clear error when neither is set."""
    root = configured_data_root(data_root)
    if root is None:
        raise ConfigError(f"no data root: pass --data-root DIR or set the {DATA_ROOT_ENV} environment variable")
    return root.resolve()


def benchmark_paths(benchmark: str, data_root: str | os.PathLike | None = None) -> dict[str, Path]:
    """Absolute training and test folders of one benchmark: keys data_dir, test_dir and test_dir2d or test_dir3d."""
    if benchmark not in BENCHMARK_LAYOUT:
        raise ConfigError(f"unknown benchmark '{benchmark}'; known: {', '.join(BENCHMARKS)}")
    root = resolve_data_root(data_root)
    entry = BENCHMARK_LAYOUT[benchmark]
    out = {"data_dir": root / entry["data_dir"], "test_dir": root / entry["test_dir"]}
    if entry["test_dim"] in ("2d", "3d"):
        out[f"test_dir{entry['test_dim']}"] = out["test_dir"]
    return out


def datasets_for(benchmarks: list[str] | tuple[str, ...]) -> list[str]:
    """The downloads a set of benchmarks needs, in the order they must be prepared (all_mito last)."""
    needed: set[str] = set()
    for b in benchmarks:
        if b in DATASETS:
            needed.add(b)
        elif b in DATASET_OF_BENCHMARK:
            needed.add(DATASET_OF_BENCHMARK[b])
        else:
            raise ConfigError(f"unknown benchmark '{b}'; known: {', '.join(BENCHMARKS)} (or a dataset: "
                              f"{', '.join(DATASETS)})")
    if "all_mito" in needed:
        needed.update(ALL_MITO_INPUTS)
    return [d for d in DATASETS if d in needed]
