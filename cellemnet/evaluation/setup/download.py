"""Downloads with checksums, and safe archive extraction.

Every file is fetched to a temporary name beside its destination, hashed while it streams, checked, and only
then renamed into place, so an interrupted or corrupt download never looks complete. Where the publisher's
checksum is not known, the SHA-256 seen on the first download is recorded in a small JSON registry (one per data
root) and every later run checks the file against it ("trust on first use").

A failure is a `DownloadError` that names the URL and says what to do (retry, or fetch the file by hand and put
it where the message says); nothing fails silently.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from cellemnet.errors import CellEMNetError, InputError
from cellemnet.io import atomic_path, atomic_write_text

CHUNK = 1 << 20
USER_AGENT = "cellemnet-setup/1 (+https://github.com/volume-em/cem-dataset)"


class DownloadError(CellEMNetError):
    """A download that failed or whose content does not match its checksum; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class RemoteFile:
    """One file to download: where from, the name to save it under, and its checksum when the publisher's is known."""

    url: str
    filename: str
    sha256: str | None = None
    md5: str | None = None
    # Only for a host whose TLS certificate has lapsed and whose file has a pinned SHA-256 (the content is still
    # verified, so a tampered file is refused either way).
    verify_tls: bool = True


def file_digests(path: str | os.PathLike) -> dict[str, str]:
    """SHA-256 and MD5 of a file, read in chunks."""
    sha, md5 = hashlib.sha256(), hashlib.md5()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            sha.update(chunk)
            md5.update(chunk)
    return {"sha256": sha.hexdigest(), "md5": md5.hexdigest()}


class ChecksumRegistry:
    """SHA-256 values recorded on first download, kept in a JSON file (filename -> sha256)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._data: dict[str, str] = {}
        if self.path.is_file():
            try:
                self._data = dict(json.loads(self.path.read_text()))
            except (ValueError, TypeError):
                raise InputError(f"{self.path}: not a valid checksum registry (JSON object expected); "
                                 "delete it to record the checksums again") from None

    def get(self, filename: str) -> str | None:
        return self._data.get(filename)

    def record(self, filename: str, sha256: str) -> None:
        self._data[filename] = sha256
        atomic_write_text(self.path, json.dumps(self._data, indent=2, sort_keys=True) + "\n")


def expected_digest(remote: RemoteFile, registry: ChecksumRegistry | None) -> tuple[str, str] | None:
    """(algorithm, hex digest) to check against: the publisher's, else the one recorded on first download."""
    if remote.sha256:
        return "sha256", remote.sha256.lower()
    if remote.md5:
        return "md5", remote.md5.lower()
    recorded = registry.get(remote.filename) if registry is not None else None
    return ("sha256", recorded) if recorded else None


def verify_file(path: Path, remote: RemoteFile, registry: ChecksumRegistry | None) -> str:
    """Check a file against its expected checksum; record the SHA-256 when none is known. Returns 'verified' or
    'recorded'."""
    digests = file_digests(path)
    expected = expected_digest(remote, registry)
    if expected is None:
        if registry is not None:
            registry.record(remote.filename, digests["sha256"])
        return "recorded"
    algo, want = expected
    if digests[algo] != want:
        raise DownloadError(
            f"checksum mismatch for {path} (from {remote.url}): expected {algo} {want}, got {digests[algo]}. "
            "The file is truncated or corrupt, or the source changed; delete it and run again, or download it by "
            f"hand from {remote.url} and save it as {path}"
        )
    return "verified"


def _stream(url: str, dest: Path, timeout: float, progress: bool, verify_tls: bool = True) -> None:
    import ssl

    from tqdm import tqdm

    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    context = None
    if not verify_tls:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
        total = response.headers.get("Content-Length")
        with atomic_path(dest) as tmp, open(tmp, "wb") as out, tqdm(
            total=int(total) if total else None, unit="B", unit_scale=True, desc=dest.name, disable=not progress
        ) as bar:
            for chunk in iter(lambda: response.read(CHUNK), b""):
                out.write(chunk)
                bar.update(len(chunk))


def fetch(
    remote: RemoteFile,
    dest_dir: str | os.PathLike,
    registry: ChecksumRegistry | None = None,
    timeout: float = 60.0,
    progress: bool = True,
) -> tuple[Path, str]:
    """Download `remote` into dest_dir (skipped when a verified copy is there). Returns (path, what happened).

    What happened is 'present' (already there and verified), 'downloaded' or 'downloaded, checksum recorded'.
    """
    dest = Path(dest_dir) / remote.filename
    if dest.is_file():
        verify_file(dest, remote, registry)
        return dest, "present"
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        _stream(remote.url, dest, timeout, progress, verify_tls=remote.verify_tls or not remote.sha256)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise DownloadError(
            f"could not download {remote.url} ({reason}). Check the network and run again, or download the file "
            f"by hand and save it as {dest}, then run again (it is checked and used from there)"
        ) from None
    try:
        status = verify_file(dest, remote, registry)
    except DownloadError:
        dest.unlink(missing_ok=True)  # never leave a bad file where the next run would trust it
        raise
    return dest, "downloaded" if status == "verified" else "downloaded, checksum recorded"


def extract_zip(archive: str | os.PathLike, dest_dir: str | os.PathLike) -> Path:
    """Extract a zip into dest_dir, refusing members that would land outside it. Returns dest_dir."""
    archive, dest_dir = Path(archive), Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    root = dest_dir.resolve()
    try:
        with zipfile.ZipFile(archive) as zf:
            for member in zf.infolist():
                target = (root / member.filename).resolve()
                if root != target and root not in target.parents:
                    raise InputError(f"{archive}: member '{member.filename}' would extract outside {dest_dir}")
            zf.extractall(root)
    except zipfile.BadZipFile:
        raise InputError(f"{archive}: not a valid zip archive; delete it and run again to download it afresh") from None
    return dest_dir
