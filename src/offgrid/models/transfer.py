"""Moving model files safely: one pass that copies and hashes, atomic publication.

A copy is written to a hidden temporary name beside its destination (``.NAME.PID.partial``;
listings skip hidden files), fsynced, checked against the hash it must have, and only then
linked to its real name, so a killed or failed copy never leaves a model behind. Hashing
while copying reads the source once instead of twice (``cp`` then ``sha256sum``).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import psutil

from offgrid.config import human_size
from offgrid.errors import IntegrityError, StorageError

__all__ = [
    "CHUNK",
    "NO_PROGRESS",
    "Progress",
    "check_free_space",
    "clean_partials",
    "copy_hashed",
    "fsync_dir",
    "hash_file",
    "write_atomic",
]

CHUNK = 8 * 1024 * 1024
_PARTIAL = re.compile(r"^\..+\.(\d+)\.partial$")


class Progress(Protocol):
    """Where long file work reports how far it got."""

    def start(self, name: str, total: int) -> None: ...

    def advance(self, done: int) -> None: ...


class _Silent:
    def start(self, name: str, total: int) -> None:
        pass

    def advance(self, done: int) -> None:
        pass


NO_PROGRESS: Progress = _Silent()


def hash_file(path: Path, progress: Progress = NO_PROGRESS, *, drop_cache: bool = False) -> str:
    """The sha256 of a file, read in large chunks.

    ``drop_cache`` asks the kernel to forget its cached pages first, so the bytes are read
    back from the medium itself (a USB stick that lies about a write shows here).
    """
    digest = hashlib.sha256()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    progress.start(path.name, path.stat().st_size)
    with _storage_errors(path), path.open("rb") as fh:
        if drop_cache and hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        while n := fh.readinto(buf):
            digest.update(view[:n])
            progress.advance(n)
    return digest.hexdigest()


def copy_hashed(
    src: Path,
    dest: Path,
    *,
    expected: str | None = None,
    expected_from: str = "",
    overwrite: bool = False,
    progress: Progress = NO_PROGRESS,
) -> str:
    """Copy ``src`` to ``dest`` and return its sha256, computed in the same pass.

    ``dest`` appears only complete, fsynced and, when ``expected`` is given, matching it;
    otherwise IntegrityError (naming ``src`` and where ``expected`` came from) and nothing
    is left. Without ``overwrite`` an existing
    ``dest`` is never replaced (FileExistsError).
    """
    size = src.stat().st_size
    check_free_space(dest.parent, size, what=dest.name)
    tmp = dest.parent / f".{dest.name}.{os.getpid()}.partial"
    digest = hashlib.sha256()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    progress.start(src.name, size)
    try:
        with _storage_errors(dest), src.open("rb") as fin, tmp.open("wb") as fout:
            while n := fin.readinto(buf):
                digest.update(view[:n])
                fout.write(view[:n])
                progress.advance(n)
            fout.flush()
            os.fsync(fout.fileno())
        src_stat = src.stat()  # keep the source's times, as `cp -p` does: a later change
        os.utime(tmp, ns=(src_stat.st_atime_ns, src_stat.st_mtime_ns))  # shows in the mtime
        actual = digest.hexdigest()
        if expected is not None and actual != expected.lower():
            raise IntegrityError(
                f"{src} is damaged: its sha256 is {actual}, but "
                f"{expected_from or 'the recorded hash'} says {expected}. It was not copied; "
                "get a good copy of it and try again."
            )
        with _storage_errors(dest):
            if overwrite:
                os.replace(tmp, dest)
            else:
                os.link(tmp, dest)  # fails if dest exists: never overwrite by accident
            fsync_dir(dest.parent)
        return actual
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Write a small file whole or not at all (temp, fsync, rename)."""
    tmp = path.parent / f".{path.name}.{os.getpid()}.partial"
    try:
        with _storage_errors(path):
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_free_space(folder: Path, need: int, *, what: str) -> None:
    """StorageError before writing ``need`` bytes where they cannot fit."""
    free = shutil.disk_usage(folder).free
    if need > free:
        raise StorageError(
            f"Not enough space in {folder} for {what}: it needs {human_size(need)} and "
            f"{human_size(free)} is free. Free some space or choose another folder."
        )


def clean_partials(folder: Path) -> int:
    """Remove temporary files left by copies whose process is gone; return how many."""
    removed = 0
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            match = _PARTIAL.match(entry.name)
            if match and not psutil.pid_exists(int(match.group(1))):
                Path(entry.path).unlink(missing_ok=True)
                removed += 1
    return removed


@contextlib.contextmanager
def _storage_errors(path: Path) -> Iterator[None]:
    """Turn a full disk or an unwritable folder into a StorageError naming the file."""
    try:
        yield
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise StorageError(
                f"The disk holding {path.parent} is full: {path.name} was not written. "
                "Free some space and try again; nothing half-written was left."
            ) from exc
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise StorageError(
                f"Cannot write {path}: {exc.strerror}. Choose a folder you can write to."
            ) from exc
        raise StorageError(f"Cannot read or write {path}: {exc.strerror or exc}") from exc
