"""CREMI: synaptic clefts in ssTEM of the adult fly brain, tested on a 3D volume.

Samples A and B train, C tests: `volumes/raw`, and clefts (`volumes/labels/clefts` other than 2^64 - 1) as 0/1,
saved with their voxel size; xy slices go to cremi/2d/ for training. The SHA-256 values are the ones other EM tools
(torch-em) pin. cremi.org's TLS certificate has lapsed at times, so the files are fetched without certificate checks,
which is safe only because each one has a pinned SHA-256 that is always checked.
"""
from __future__ import annotations

from cellemnet.evaluation.benchmarks._base import Benchmark, Dataset
from cellemnet.evaluation.setup import convert
from cellemnet.evaluation.setup.download import RemoteFile

# (file, split, SHA-256)
FILES = (
    ("sample_A_20160501.hdf", "train", "4c563d1b78acb2bcfb3ea958b6fe1533422f7f4a19f3e05b600bfa11430b510d"),
    ("sample_B_20160501.hdf", "train", "887e85521e00deead18c94a21ad71f278d88a5214c7edeed943130a1f4bb48b8"),
    ("sample_C_20160501.hdf", "test", "2874496f224d222ebc29d0e4753e8c458093e1d37bc53acd1b69b19ed1ae7052"),
)
SPLITS = {name: split for name, split, _ in FILES}

DATASET = Dataset(
    name="cremi",
    sources=tuple(
        RemoteFile(url=f"https://cremi.org/static/data/{name}", filename=name, verify_tls=False, sha256=sha256)
        for name, _, sha256 in FILES
    ),
    converter=convert.convert_cremi,
    reads="downloads",
    params={"splits": SPLITS, "planes": ("xy",)},
)

BENCHMARK = Benchmark(
    name="cremi",
    dataset=DATASET,
    data_dir="cremi/2d",
    test_dir="cremi/3d/test",
    test_dim="3d",
    classes=("synaptic_cleft",),
)
