"""Where each benchmark's data is published, with the checksums that are known.

Checksums: Lucchi++, Kasthuri++ and CREMI SHA-256 values are the ones other EM tools (torch-em) pin for these exact
files; the Guay archive's MD5 is the one its authors' loader pins. Perez (CHM) and UroCell have no published
checksum: their SHA-256 is recorded on the first download and checked on every later run (see download.py).

UroCell's repository has since moved its label files into sub-folders; the URLs below are pinned to the commit that
still has the flat `data/`, `lyso/` and `mito/` layout the paper's setup used.

cremi.org's TLS certificate has lapsed at times; its files are fetched without certificate checks, which is safe
only because each one has a pinned SHA-256 that is always checked.
"""
from __future__ import annotations

from cellemnet.evaluation.setup.download import RemoteFile

UROCELL_COMMIT = "9d8d9c8519aba85ffdc04be73e4ab34f0eb43af8"
UROCELL_TRAIN = ("fib1-1-0-3", "fib1-3-2-1", "fib1-3-3-0", "fib1-4-3-0")
UROCELL_TEST = ("fib1-0-0-0",)
# Leading rows (numpy axis 1, y) that are blank in these two volumes and were cropped by the paper's setup.
UROCELL_Y_CROP = {"fib1-0-0-0": 12, "fib1-1-0-3": 54}


def _urocell(kind: str, volume: str) -> RemoteFile:
    url = f"https://github.com/MancaZerovnikMekuc/UroCell/raw/{UROCELL_COMMIT}/{kind}/{volume}.nii.gz"
    return RemoteFile(url=url, filename=f"urocell-{kind}-{volume}.nii.gz")


SOURCES: dict[str, tuple[RemoteFile, ...]] = {
    "lucchi_pp": (
        RemoteFile(
            url="http://www.casser.io/files/lucchi_pp.zip",
            filename="lucchi_pp.zip",
            sha256="770ce9e98fc6f29c1b1a250c637e6c5125f2b5f1260e5a7687b55a79e2e8844d",
        ),
    ),
    "kasthuri_pp": (
        RemoteFile(
            url="http://www.casser.io/files/kasthuri_pp.zip",
            filename="kasthuri_pp.zip",
            sha256="bbb78fd205ec9b57feb8f93ebbdf1666261cbc3e0305e7f11583ab5157a3d792",
        ),
    ),
    "perez": (
        RemoteFile(
            url="https://www.sci.utah.edu/releases/chm_v2.1.367/chm-supplemental_data.zip",
            filename="chm-supplemental_data.zip",
        ),
    ),
    "guay": (
        RemoteFile(
            url="https://www.dropbox.com/s/68yclbraqq1diza/platelet_data_1219.zip?dl=1",
            filename="platelet_data_1219.zip",
            md5="253310093ee2c00304fbabdb0c7e3a4a",
        ),
    ),
    "urocell": tuple(
        _urocell(kind, volume) for volume in UROCELL_TRAIN + UROCELL_TEST for kind in ("data", "lyso", "mito")
    ),
    "cremi": (
        RemoteFile(
            url="https://cremi.org/static/data/sample_A_20160501.hdf",
            filename="sample_A_20160501.hdf",
            verify_tls=False,
            sha256="4c563d1b78acb2bcfb3ea958b6fe1533422f7f4a19f3e05b600bfa11430b510d",
        ),
        RemoteFile(
            url="https://cremi.org/static/data/sample_B_20160501.hdf",
            filename="sample_B_20160501.hdf",
            verify_tls=False,
            sha256="887e85521e00deead18c94a21ad71f278d88a5214c7edeed943130a1f4bb48b8",
        ),
        RemoteFile(
            url="https://cremi.org/static/data/sample_C_20160501.hdf",
            filename="sample_C_20160501.hdf",
            verify_tls=False,
            sha256="2874496f224d222ebc29d0e4753e8c458093e1d37bc53acd1b69b19ed1ae7052",
        ),
    ),
}
CREMI_SPLITS = {"sample_A_20160501": "train", "sample_B_20160501": "train", "sample_C_20160501": "test"}
