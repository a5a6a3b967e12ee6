"""Kasthuri++: mitochondria in serial-section EM of mouse cortex (Casser et al.'s re-annotation of Kasthuri et
al.), a 2D benchmark.

The archive has Lucchi++'s layout (Train_In/Train_Out, Test_In/Test_Out PNGs, white masks: the padding value 2 is
background); masks already carry their images' names. Its SHA-256 is the one other EM tools (torch-em) pin.
"""
from __future__ import annotations

from cellemnet.evaluation.benchmarks._base import Benchmark, Dataset
from cellemnet.evaluation.setup import convert
from cellemnet.evaluation.setup.download import RemoteFile

DATASET = Dataset(
    name="kasthuri_pp",
    sources=(
        RemoteFile(
            url="http://www.casser.io/files/kasthuri_pp.zip",
            filename="kasthuri_pp.zip",
            sha256="bbb78fd205ec9b57feb8f93ebbdf1666261cbc3e0305e7f11583ab5157a3d792",
        ),
    ),
    converter=convert.convert_casser,
    params={"folder_name": "kasthuri_pp"},
)

BENCHMARK = Benchmark(
    name="kasthuri_pp",
    dataset=DATASET,
    data_dir="kasthuri_pp",
    test_dir="kasthuri_pp/test",
    test_dim="2d",
    classes=("mito",),
)
