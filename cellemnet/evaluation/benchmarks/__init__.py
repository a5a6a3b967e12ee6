"""The evaluation benchmarks, one module each (as torch-em has one file per dataset), registered by name.

A benchmark module (`lucchi_pp.py`, ...) defines `BENCHMARK = Benchmark(...)`: its dataset (the files to download
with their checksums, the shared converter from cellemnet.evaluation.setup.convert that makes `{data root}/{dataset}/`
and that converter's parameters), its training and test folders under the data root, which inference scores its test
set (2d, 3d or mixed), its class names and its default config (evaluation/benchmark_configs/{name}.yaml). Every
module of this package whose name does not start with `_` is one; the module's name is the benchmark's name.
Helpers shared by several benchmarks (`_perez.py`: one archive, four benchmarks) start with `_`.

Everything that needs benchmark facts reads them from here: the setup (setup_data.py, setup/pipeline.py,
setup/layout.py), the Snakefile (which inference scores a benchmark, the default sweep) and the report (the
benchmark order). Adding a benchmark is adding a module here and its YAML config.
"""
from __future__ import annotations

import difflib
import importlib
import pkgutil

from cellemnet.errors import ConfigError
from cellemnet.evaluation.benchmarks._base import CONFIG_DIR, Benchmark, Dataset

__all__ = ["BENCHMARKS", "CONFIG_DIR", "DATASETS", "Benchmark", "Dataset", "dataset", "get"]


def _discover() -> dict[str, Benchmark]:
    """Import every benchmark module of this package (sorted by name) and collect its BENCHMARK."""
    found: dict[str, Benchmark] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        benchmark = getattr(module, "BENCHMARK", None)
        if not isinstance(benchmark, Benchmark):
            raise TypeError(f"{module.__name__}: a benchmark module must define BENCHMARK = Benchmark(...)")
        if benchmark.name != info.name:
            raise ValueError(f"{module.__name__}: BENCHMARK is named '{benchmark.name}'; it must be '{info.name}'")
        found[benchmark.name] = benchmark
    return found


def _datasets(benchmarks: dict[str, Benchmark]) -> dict[str, Dataset]:
    """Each benchmark's dataset once, in setup order: registry order, a dataset after the ones it needs."""
    by_name: dict[str, Dataset] = {}
    for b in benchmarks.values():
        if by_name.setdefault(b.dataset.name, b.dataset) is not b.dataset:
            raise ValueError(f"two different datasets are named '{b.dataset.name}' (benchmark '{b.name}')")
    ordered: dict[str, Dataset] = {}
    while len(ordered) < len(by_name):
        ready = [d for name, d in by_name.items() if name not in ordered and set(d.needs) <= set(ordered)]
        if not ready:
            stuck = sorted(set(by_name) - set(ordered))
            raise ValueError(f"datasets {stuck} need datasets that are not registered, or each other")
        ordered.update((d.name, d) for d in ready[:1])
    return ordered


BENCHMARKS: dict[str, Benchmark] = _discover()
DATASETS: dict[str, Dataset] = _datasets(BENCHMARKS)


def _unknown(kind: str, name: str, known) -> ConfigError:
    close = difflib.get_close_matches(str(name), list(known), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return ConfigError(f"unknown {kind} '{name}'{hint}; known: {', '.join(known)}")


def get(name: str) -> Benchmark:
    """The registered benchmark of that name; an error with a did-you-mean hint when there is none."""
    try:
        return BENCHMARKS[name]
    except (KeyError, TypeError):
        raise _unknown("benchmark", name, BENCHMARKS) from None


def dataset(name: str) -> Dataset:
    """The registered dataset (setup unit) of that name; an error with a did-you-mean hint when there is none."""
    try:
        return DATASETS[name]
    except (KeyError, TypeError):
        raise _unknown("dataset", name, DATASETS) from None
