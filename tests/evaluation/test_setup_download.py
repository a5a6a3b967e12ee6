"""Downloads: checksums (known, recorded on first use, mismatched), failures as clear errors, safe extraction."""
from __future__ import annotations

import hashlib
import json
import zipfile

import pytest

from cellemnet.errors import InputError
from cellemnet.evaluation.benchmarks import DATASETS
from cellemnet.evaluation.setup import download as dl
from cellemnet.evaluation.setup.download import ChecksumRegistry, DownloadError, RemoteFile, extract_zip, fetch


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "server" / "data.bin"
    path.parent.mkdir()
    path.write_bytes(b"electron microscopy" * 100)
    return path


def sha256_of(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_fetch_with_known_sha256_downloads_and_then_only_verifies(tmp_path, source):
    remote = RemoteFile(url=source.as_uri(), filename="data.bin", sha256=sha256_of(source))
    path, what = fetch(remote, tmp_path / "downloads", progress=False)
    assert what == "downloaded"
    assert path.read_bytes() == source.read_bytes()
    source.unlink()  # the second call must not need the source
    path2, what2 = fetch(remote, tmp_path / "downloads", progress=False)
    assert (path2, what2) == (path, "present")


def test_unknown_checksum_is_recorded_on_first_download_and_checked_later(tmp_path, source):
    registry = ChecksumRegistry(tmp_path / "downloads" / "checksums.json")
    remote = RemoteFile(url=source.as_uri(), filename="data.bin")
    path, what = fetch(remote, tmp_path / "downloads", registry=registry, progress=False)
    assert what == "downloaded, checksum recorded"
    recorded = json.loads((tmp_path / "downloads" / "checksums.json").read_text())
    assert recorded == {"data.bin": sha256_of(source)}
    # A later run (fresh registry object read from disk) catches a file that changed since.
    path.write_bytes(b"truncated")
    with pytest.raises(DownloadError, match="checksum mismatch") as err:
        fetch(remote, tmp_path / "downloads", registry=ChecksumRegistry(registry.path), progress=False)
    assert str(path) in str(err.value) and source.as_uri() in str(err.value)


def test_download_with_wrong_checksum_is_refused_and_not_kept(tmp_path, source):
    remote = RemoteFile(url=source.as_uri(), filename="data.bin", sha256="0" * 64)
    with pytest.raises(DownloadError, match="expected sha256 0000") as err:
        fetch(remote, tmp_path / "downloads", progress=False)
    assert "download it by hand" in str(err.value)
    assert not (tmp_path / "downloads" / "data.bin").exists()
    assert list((tmp_path / "downloads").iterdir()) == []  # no temp file left either


def test_md5_is_checked_when_that_is_the_published_checksum(tmp_path, source):
    good = RemoteFile(url=source.as_uri(), filename="a.bin", md5=hashlib.md5(source.read_bytes()).hexdigest())
    assert fetch(good, tmp_path / "d", progress=False)[1] == "downloaded"
    bad = RemoteFile(url=source.as_uri(), filename="b.bin", md5="f" * 32)
    with pytest.raises(DownloadError, match="expected md5"):
        fetch(bad, tmp_path / "d", progress=False)


def test_failed_download_names_url_and_what_to_do(tmp_path):
    url = (tmp_path / "missing" / "lucchi_pp.zip").as_uri()
    remote = RemoteFile(url=url, filename="lucchi_pp.zip")
    with pytest.raises(DownloadError) as err:
        fetch(remote, tmp_path / "downloads", progress=False)
    message = str(err.value)
    assert url in message
    assert str(tmp_path / "downloads" / "lucchi_pp.zip") in message and "by hand" in message
    assert not (tmp_path / "downloads" / "lucchi_pp.zip").exists()


def test_unreachable_host_is_a_download_error(tmp_path):
    remote = RemoteFile(url="http://127.0.0.1:9/never.zip", filename="never.zip")
    with pytest.raises(DownloadError, match="127.0.0.1:9/never.zip"):
        fetch(remote, tmp_path, timeout=5, progress=False)


def test_file_placed_by_hand_is_verified_and_used(tmp_path, source):
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    (downloads / "data.bin").write_bytes(source.read_bytes())
    remote = RemoteFile(url="http://127.0.0.1:9/unreachable", filename="data.bin", sha256=sha256_of(source))
    assert fetch(remote, downloads, progress=False)[1] == "present"


def test_extract_zip_refuses_members_outside_the_target(tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("../escape.txt", "x")
    with pytest.raises(InputError, match="outside"):
        extract_zip(archive, tmp_path / "out")
    assert not (tmp_path / "escape.txt").exists()


def test_extract_zip_on_a_non_zip_says_so(tmp_path):
    archive = tmp_path / "page.zip"
    archive.write_text("<html>Dropbox sign-in page</html>")
    with pytest.raises(InputError, match="not a valid zip"):
        extract_zip(archive, tmp_path / "out")


def test_corrupt_registry_is_a_clear_error(tmp_path):
    path = tmp_path / "checksums.json"
    path.write_text("{not json")
    with pytest.raises(InputError, match="checksum registry"):
        ChecksumRegistry(path)


def test_every_known_checksum_is_well_formed():
    names = set()
    for dataset in DATASETS.values():
        for r in dataset.sources:
            assert r.url.startswith(("http://", "https://"))
            assert r.filename not in names
            names.add(r.filename)
            if r.sha256:
                assert len(r.sha256) == 64 and int(r.sha256, 16) >= 0
            if r.md5:
                assert len(r.md5) == 32 and int(r.md5, 16) >= 0
            assert r.verify_tls or r.sha256  # TLS checks are only skipped where the content is pinned
    assert dl.USER_AGENT
