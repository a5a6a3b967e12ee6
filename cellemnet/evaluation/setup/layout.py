"""Where each benchmark lives under the one data root.

The data root is `--data-root` on the command line, else the CELLEMNET_DATA_ROOT environment variable. Configs
never hold machine paths: the training and test folders are relative to the root (the original setup wrote
absolute paths into the tracked YAML files instead). The folders, and which download (dataset) feeds which
benchmark, are the benchmark modules' (cellemnet/evaluation/benchmarks/).
"""
from __future__ import annotations

import difflib
import os
from pathlib import Path

from cellemnet.errors import ConfigError
from cellemnet.evaluation import benchmarks
from cellemnet.evaluation.config import DATA_ROOT_ENV, configured_data_root


def resolve_data_root(data_root: str | os.PathLike | None = None) -> Path:
    """The data root: the argument when given, else $CELLEMNET_DATA_ROOT; a clear error when neither is set."""
    root = configured_data_root(data_root)
    if root is None:
        raise ConfigError(f"no data root: pass --data-root DIR or set the {DATA_ROOT_ENV} environment variable")
    return root.resolve()


def benchmark_paths(benchmark: str, data_root: str | os.PathLike | None = None) -> dict[str, Path]:
    """Absolute training and test folders of one benchmark: keys data_dir, test_dir and test_dir2d or test_dir3d."""
    entry = benchmarks.get(benchmark)
    root = resolve_data_root(data_root)
    out = {"data_dir": root / entry.data_dir, "test_dir": root / entry.test_dir}
    if entry.test_dim in ("2d", "3d"):
        out[f"test_dir{entry.test_dim}"] = out["test_dir"]
    return out


def datasets_for(names: list[str] | tuple[str, ...]) -> list[str]:
    """The downloads (datasets) a set of benchmark or dataset names needs, in the order they must be prepared (a
    dataset after those it is built from)."""
    needed: set[str] = set()
    for name in names:
        if name in benchmarks.DATASETS:
            needed.add(name)
        elif name in benchmarks.BENCHMARKS:
            needed.add(benchmarks.BENCHMARKS[name].dataset.name)
        else:
            close = difflib.get_close_matches(str(name), [*benchmarks.BENCHMARKS, *benchmarks.DATASETS], n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown benchmark '{name}'{hint}; known: {', '.join(benchmarks.BENCHMARKS)} (or a "
                              f"dataset: {', '.join(benchmarks.DATASETS)})")
    pending = list(needed)
    while pending:  # and what those are built from
        for need in benchmarks.dataset(pending.pop()).needs:
            if need not in needed:
                needed.add(need)
                pending.append(need)
    return [d for d in benchmarks.DATASETS if d in needed]
