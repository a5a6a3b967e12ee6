"""Guay et al.: platelets in SBF-SEM, seven classes, tested on a 3D volume (the only benchmark with a validation
split).

The archive holds {train,eval,test}-{images,labels}.tif: int16 images, min-max stretched per volume to uint8, and
uint16 labels 0..6 (0 background, 1 cell, 2 mitochondria, 3-6 other organelles); the error-weight volume is not
used. Volumes go to guay/3d/{train,valid,test}, their xy slices to guay/2d/ for training. The MD5 is the one its
authors' loader pins.
"""
from __future__ import annotations

from cellemnet.evaluation.benchmarks._base import Benchmark, Dataset
from cellemnet.evaluation.setup import convert
from cellemnet.evaluation.setup.download import RemoteFile

# Split name in the archive -> ours.
SPLITS = {"train": "train", "eval": "valid", "test": "test"}

DATASET = Dataset(
    name="guay",
    sources=(
        RemoteFile(
            url="https://www.dropbox.com/s/68yclbraqq1diza/platelet_data_1219.zip?dl=1",
            filename="platelet_data_1219.zip",
            md5="253310093ee2c00304fbabdb0c7e3a4a",
        ),
    ),
    converter=convert.convert_guay,
    params={"splits": SPLITS, "planes": ("xy",)},
)

BENCHMARK = Benchmark(
    name="guay",
    dataset=DATASET,
    data_dir="guay/2d",
    test_dir="guay/3d/test",
    test_dim="3d",
    classes=("back", "cell", "mito", "can_chan", "alpha_gran", "dense_gran", "dense_gran_core"),
)
