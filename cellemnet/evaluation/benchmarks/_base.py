"""What a benchmark module declares: a `Dataset` (one download-and-convert unit, one folder under the data root)
and a `Benchmark` (what fine-tuning and inference read from it). Both are frozen: the registry is read, never
edited."""
from __future__ import annotations

import dataclasses
import types
from pathlib import Path
from typing import Any, Callable, Mapping

from cellemnet.evaluation.setup.download import RemoteFile
from cellemnet.shipped import shipped_dir

# The tracked benchmark configs (evaluation/benchmark_configs/{name}.yaml, all with `BASE: base.yaml`), from a
# checkout or an installed wheel.
CONFIG_DIR = shipped_dir("benchmark_configs")
TEST_DIMS = ("2d", "3d", "mixed")
# What a dataset's converter is given as its first argument (see Dataset.convert).
READS = ("archive", "downloads", "data_root")


@dataclasses.dataclass(frozen=True)
class Dataset:
    """One setup unit: the files to download, the shared converter that turns them into `{data root}/{name}/`,
    with its parameters, and the datasets that must be set up first (all_mito is built from five others).

    The converter is called as `converter(source, out, work, **params)`, where source is, by `reads`: "archive"
    the one downloaded file, "downloads" the downloads folder (several files), "data_root" the data root (a dataset
    made from other datasets). It returns counts (what was made) for the setup marker and summary.
    """

    name: str
    converter: Callable[..., dict]
    sources: tuple[RemoteFile, ...] = ()
    reads: str = "archive"
    params: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    needs: tuple[str, ...] = ()

    def __post_init__(self):
        if self.reads not in READS:
            raise ValueError(f"dataset '{self.name}': reads must be one of {READS}, got {self.reads!r}")
        if self.reads == "archive" and len(self.sources) != 1:
            raise ValueError(f"dataset '{self.name}': reads='archive' needs exactly one source file")
        object.__setattr__(self, "sources", tuple(self.sources))
        object.__setattr__(self, "needs", tuple(self.needs))
        object.__setattr__(self, "params", types.MappingProxyType(dict(self.params)))

    def run(self, source: Path, out: Path, work: Path | None) -> dict:
        """The converter on `source` (what `reads` names), writing into out; returns its counts."""
        return self.converter(source, out, work, **self.params)

    def convert(self, downloads: Path, data_root: Path, out: Path, work: Path | None) -> dict:
        """Convert from the downloads folder (or, for a dataset made from others, the data root) into out."""
        if self.reads == "archive":
            source = downloads / self.sources[0].filename
        else:
            source = downloads if self.reads == "downloads" else data_root
        return self.run(source, out, work)


@dataclasses.dataclass(frozen=True)
class Benchmark:
    """One evaluation benchmark: the dataset it comes from, its training and test folders (relative to the data
    root), which inference its test set takes (2d images, 3d volumes, or the all_mito mix), its class names
    (background first when there are several; one name: binary) and its default config file."""

    name: str
    dataset: Dataset
    data_dir: str
    test_dir: str
    test_dim: str
    classes: tuple[str, ...]
    config: Path | None = None  # default: CONFIG_DIR / f"{name}.yaml"; a relative path is relative to CONFIG_DIR

    def __post_init__(self):
        if self.test_dim not in TEST_DIMS:
            raise ValueError(f"benchmark '{self.name}': test_dim must be one of {TEST_DIMS}, got {self.test_dim!r}")
        if not self.classes:
            raise ValueError(f"benchmark '{self.name}': classes must name at least one class")
        object.__setattr__(self, "classes", tuple(self.classes))
        config = CONFIG_DIR / f"{self.name}.yaml" if self.config is None else CONFIG_DIR / self.config
        object.__setattr__(self, "config", config)

    def label(self, class_name: str) -> int:
        """The mask value of a class: 1 for a binary benchmark's one class, else the class's index."""
        if class_name not in self.classes:
            raise ValueError(f"benchmark '{self.name}' has no class '{class_name}'; its classes: {self.classes}")
        return 1 if len(self.classes) == 1 else self.classes.index(class_name)
