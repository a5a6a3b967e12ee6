"""All Mitochondria: a mix of five benchmarks, trained on 256-px patches of their training images and tested on
each of their test sets (2D and 3D, the `mixed` inference).

Nothing is downloaded: it is built from the other benchmarks once they are set up. Patch masks are (label ==
mitochondria) as 0/1, patches whose image has < 5 % non-zero pixels are dropped, and names are prefixed by their
benchmark. The 2D test sets are copied to all_mito/test/2d/{name}; the 3D test volumes go to all_mito/test/3d/{name}
with mitochondria 1 (guay: 1 mitochondria, 2 the rest of the cell, 0 outside, for mask_prediction3d).
"""
from __future__ import annotations

import functools

from cellemnet.evaluation.benchmarks import guay, kasthuri_pp, lucchi_pp, perez_mito, urocell
from cellemnet.evaluation.benchmarks._base import Benchmark, Dataset
from cellemnet.evaluation.setup import convert

MITO = "mito"
PATCH_SIZE = 256
# The benchmarks it mixes, in the order their patches and test sets are made.
PARTS = (perez_mito.BENCHMARK, lucchi_pp.BENCHMARK, kasthuri_pp.BENCHMARK, urocell.BENCHMARK, guay.BENCHMARK)
# How a 3D test mask is relabelled where mitochondria-only (1, else 0) is not what its config scores.
TEST3D_RULES = {"guay": convert.guay_mito_and_cell}


def _test3d_rule(part: Benchmark):
    return TEST3D_RULES.get(part.name) or functools.partial(convert.binary_mask, label=part.label(MITO))


DATASET = Dataset(
    name="all_mito",
    converter=convert.convert_all_mito,
    reads="data_root",
    params={
        "train": tuple((f"{b.data_dir}/train", b.label(MITO), b.name) for b in PARTS),
        "test2d": {b.name: b.test_dir for b in PARTS if b.test_dim == "2d"},
        "test3d": {b.name: (b.test_dir, _test3d_rule(b)) for b in PARTS if b.test_dim == "3d"},
        "patch_size": PATCH_SIZE,
    },
    needs=tuple(dict.fromkeys(b.dataset.name for b in PARTS)),
)

BENCHMARK = Benchmark(
    name="all_mito",
    dataset=DATASET,
    data_dir="all_mito",
    test_dir="all_mito/test",
    test_dim="mixed",
    classes=(MITO,),
)
