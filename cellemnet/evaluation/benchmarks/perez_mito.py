"""Perez mitochondria (the CHM archive's `mitochondria` folder), a 2D benchmark: see _perez.py for the download and the
conversion. The ground truth labels only some instances, so its config scores with instance matching."""
from __future__ import annotations

from cellemnet.evaluation.benchmarks import _perez

BENCHMARK = _perez.benchmark("mito")
