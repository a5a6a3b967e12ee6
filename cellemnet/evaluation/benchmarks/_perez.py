"""The Perez et al. archive (CHM supplemental data): one download, four 2D benchmarks, perez_lyso, perez_mito,
perez_nuclei and perez_nucleoli (one module each, made by `benchmark`).

The archive holds {training_images, training_labels, test_images, ground_truth}/{organelle}/; each organelle goes
to `perez/{short name}/{train,test}/{images,masks}`. No checksum is published: the SHA-256 is recorded on the
first download and checked on every later run (see setup/download.py).
"""
from __future__ import annotations

from cellemnet.evaluation.benchmarks._base import Benchmark, Dataset
from cellemnet.evaluation.setup import convert
from cellemnet.evaluation.setup.download import RemoteFile

# Organelle folder in the archive -> our short name (the folder under perez/, the benchmark perez_{short}, its class).
ORGANELLES = {"mitochondria": "mito", "lysosomes": "lyso", "nuclei": "nuclei", "nucleoli": "nucleoli"}

DATASET = Dataset(
    name="perez",
    sources=(
        RemoteFile(
            url="https://www.sci.utah.edu/releases/chm_v2.1.367/chm-supplemental_data.zip",
            filename="chm-supplemental_data.zip",
        ),
    ),
    converter=convert.convert_perez,
    params={"organelles": ORGANELLES},
)


def benchmark(short: str) -> Benchmark:
    """perez_{short}: one organelle of the archive, binary, in perez/{short}/ with its 2D test set in test/."""
    if short not in ORGANELLES.values():
        raise ValueError(f"the Perez archive has no organelle '{short}'; it has {', '.join(ORGANELLES.values())}")
    return Benchmark(
        name=f"perez_{short}",
        dataset=DATASET,
        data_dir=f"perez/{short}",
        test_dir=f"perez/{short}/test",
        test_dim="2d",
        classes=(short,),
    )
