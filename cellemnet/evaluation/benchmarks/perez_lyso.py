"""Perez lysosomes (the CHM archive's `lysosomes` folder), a 2D benchmark: see _perez.py for the download and the
conversion. The ground truth labels only some instances, so its config scores with instance matching."""
from __future__ import annotations

from cellemnet.evaluation.benchmarks import _perez

BENCHMARK = _perez.benchmark("lyso")
