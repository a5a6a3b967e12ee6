"""Lucchi++: mitochondria in a FIB-SEM stack of mouse hippocampus (Casser et al.'s re-annotation of Lucchi et al.),
a 2D benchmark.

The archive holds Train_In/Train_Out and Test_In/Test_Out PNGs; masks are white on black (only exactly-255 pixels
are foreground) and named `N.png`, renamed `maskNNNN.png` to pair with their images. Its SHA-256 is the one other EM
tools (torch-em) pin for this file.
"""
from __future__ import annotations

from cellemnet.evaluation.benchmarks._base import Benchmark, Dataset
from cellemnet.evaluation.setup import convert
from cellemnet.evaluation.setup.download import RemoteFile

DATASET = Dataset(
    name="lucchi_pp",
    sources=(
        RemoteFile(
            url="http://www.casser.io/files/lucchi_pp.zip",
            filename="lucchi_pp.zip",
            sha256="770ce9e98fc6f29c1b1a250c637e6c5125f2b5f1260e5a7687b55a79e2e8844d",
        ),
    ),
    converter=convert.convert_casser,
    params={"folder_name": "lucchi_pp", "mask_name": convert.lucchi_mask_name},
)

BENCHMARK = Benchmark(
    name="lucchi_pp",
    dataset=DATASET,
    data_dir="lucchi_pp",
    test_dir="lucchi_pp/test",
    test_dim="2d",
    classes=("mito",),
)
