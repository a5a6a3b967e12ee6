"""UroCell: endolysosomes and mitochondria in FIB-SEM of urothelial cells, tested on a 3D volume (orthoplane).

Each sub-volume is three NIfTI files (data, lyso, mito). The repository has since moved its label files into
sub-folders; the URLs are pinned to the commit that still has the flat data/, lyso/ and mito/ layout the paper's
setup used. No checksum is published: the SHA-256 is recorded on the first download and checked on every later run.
Labels become 1 lysosome, 2 mitochondrion; volumes go to urocell/3d/{train,test}, their slices on all three planes
to urocell/2d/ for training.
"""
from __future__ import annotations

from cellemnet.evaluation.benchmarks._base import Benchmark, Dataset
from cellemnet.evaluation.setup import convert
from cellemnet.evaluation.setup.download import RemoteFile

COMMIT = "9d8d9c8519aba85ffdc04be73e4ab34f0eb43af8"
TRAIN = ("fib1-1-0-3", "fib1-3-2-1", "fib1-3-3-0", "fib1-4-3-0")
TEST = ("fib1-0-0-0",)
KINDS = ("data", "lyso", "mito")  # the image, then the two label volumes
# Leading rows (numpy axis 1, y) that are blank in these two volumes and were cropped by the paper's setup.
Y_CROP = {"fib1-0-0-0": 12, "fib1-1-0-3": 54}


def filename(kind: str, volume: str) -> str:
    """The name one file of a sub-volume is saved under in the downloads folder."""
    return f"urocell-{kind}-{volume}.nii.gz"


def _remote(kind: str, volume: str) -> RemoteFile:
    url = f"https://github.com/MancaZerovnikMekuc/UroCell/raw/{COMMIT}/{kind}/{volume}.nii.gz"
    return RemoteFile(url=url, filename=filename(kind, volume))


DATASET = Dataset(
    name="urocell",
    sources=tuple(_remote(kind, volume) for volume in TRAIN + TEST for kind in KINDS),
    converter=convert.convert_urocell,
    reads="downloads",
    params={"splits": {"train": TRAIN, "test": TEST}, "y_crop": Y_CROP, "filename": filename,
            "planes": ("xy", "xz", "yz")},
)

BENCHMARK = Benchmark(
    name="urocell",
    dataset=DATASET,
    data_dir="urocell/2d",
    test_dir="urocell/3d/test",
    test_dim="3d",
    classes=("back", "lyso", "mito"),
)
