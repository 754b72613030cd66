"""Output paths, checked before any work starts.

A command that runs for minutes (calibration, training, a bench) and only then
finds its output folder unwritable loses all of it; every command that writes
calls one of these first, so the mistake is one line at once.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

from entmtp.errors import EntmtpError, UsageError


def _nearest_existing(path: Path) -> Path:
    """The path itself or its closest ancestor that exists."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe


def _check_writable_folder(folder: Path, what: str, target: Path) -> None:
    """`folder` exists (or its nearest existing ancestor, which `mkdir -p` would
    extend) and this process can create files in it."""
    base = _nearest_existing(folder)
    if not base.is_dir():
        raise EntmtpError(f"{what} {target}: {base} is a file, not a folder")
    try:
        # os.access misjudges some cases (root, ACLs, read-only mounts): try a real file.
        with tempfile.NamedTemporaryFile(dir=base, prefix=".entmtp-write-test-"):
            pass
    except OSError as exc:
        raise EntmtpError(f"{what} {target}: cannot write in {base} ({exc.strerror or exc})") from None


def check_output_file(path: str | os.PathLike, what: str, overwrite: bool = True) -> Path:
    """A file this command will write: not a folder, its folder writable (missing
    parents are fine: the writer creates them), and, with overwrite=False, not there
    yet. `what` names the option in messages ("--out")."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise UsageError(f"{what} {path} is a folder; give a file path")
    if path.exists() and not overwrite:
        raise UsageError(f"{what} {path} already exists; remove it or choose another path")
    _check_writable_folder(path.parent, what, path)
    return path


def check_output_folder(path: str | os.PathLike, what: str, empty: bool = False) -> Path:
    """A folder this command will write into: not a file, writable (created later
    if missing), and, with empty=True, missing or empty."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise UsageError(f"{what} {path} is a file; give a folder path")
    if empty and path.is_dir() and any(path.iterdir()):
        raise UsageError(f"{what} {path} is not empty; remove it or choose another folder")
    _check_writable_folder(path, what, path)
    return path


def write_atomically(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Run `write(tmp)` on a temporary file beside `path`, then rename it over `path`:
    readers (and a Ctrl-C mid-write) see the old file or the whole new one, never a
    torn one. The folder is created if missing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
