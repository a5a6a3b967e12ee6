"""Names read from files (CSV columns, HDF5 attributes, manifest fields, config values) before they become paths.

A name from a file is data, not a path: `../../escape`, `/etc/x` or `a/b` in a CSV must not make a command write
outside its output folder. `path_component` accepts only a single, plain file-name component; `inside` checks
that a path built from one stays under its base folder (symlinks resolved), as a second line of defence.
"""
from __future__ import annotations

import os
from pathlib import Path, PurePosixPath, PureWindowsPath

from cellemnet.errors import InputError


def path_component(name: str, where: str) -> str:
    """`name` itself when it is one plain path component; InputError naming `where` otherwise.

    Refused: empty, `.`, `..`, anything with `/` or `\\`, a drive or absolute path, NUL or other control
    characters."""
    text = str(name)
    problem = None
    if not text.strip():
        problem = "is empty"
    elif text in (".", ".."):
        problem = "is a relative folder reference"
    elif "/" in text or "\\" in text:
        problem = "contains a path separator"
    elif PurePosixPath(text).is_absolute() or PureWindowsPath(text).drive:
        problem = "is an absolute path"
    elif any(ord(c) < 32 for c in text):
        problem = "contains control characters"
    if problem:
        raise InputError(f"{where}: name {text!r} {problem}; it must be a plain file name (no folders)")
    return text


def is_within(path: str | os.PathLike, base: str | os.PathLike, or_equal: bool = False) -> bool:
    """True when `path` resolves to somewhere under `base` (symlinks resolved); `or_equal`: `base` itself too."""
    resolved, base_resolved = Path(path).resolve(), Path(base).resolve()
    return base_resolved in resolved.parents or (or_equal and resolved == base_resolved)


def inside(base: str | os.PathLike, path: str | os.PathLike, where: str) -> Path:
    """`path` when it resolves to somewhere under `base` (itself excluded); InputError naming `where` otherwise."""
    if not is_within(path, base):
        raise InputError(f"{where}: {path} would be written outside {base}")
    return Path(path)
