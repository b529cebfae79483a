"""Files written safely: copies hashed in one pass, atomic publication (temp, fsync, rename).

A copy is written to a hidden temporary name beside its destination (``.NAME.PID.partial``;
listings skip hidden files), fsynced, checked against the hash it must have, and only then
linked to its real name, so a killed or failed copy never leaves a model behind. Hashing
while copying reads the source once instead of twice (``cp`` then ``sha256sum``).
"""

from __future__ import annotations

import collections
import contextlib
import errno
import hashlib
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import IO, BinaryIO, Literal, Protocol

import psutil

from offgrid.errors import BadRequestError, IntegrityError, StorageError
from offgrid.units import human_size

__all__ = [
    "CHUNK",
    "NO_PROGRESS",
    "SHA256_HEX",
    "Progress",
    "ReadBack",
    "atomic_writer",
    "check_free_space",
    "clean_partials",
    "copy_hashed",
    "damaged",
    "fsync_dir",
    "hash_file",
    "publish_new",
    "write_hashed",
]

CHUNK = 8 * 1024 * 1024
SHA256_HEX = re.compile(r"^[0-9a-fA-F]{64}$")
ReadBack = Literal["none", "sample", "all"]
_PARTIAL = re.compile(r"^\..+\.(\d+)\.[0-9a-f]+\.partial$")  # .NAME.PID.TOKEN.partial


class Progress(Protocol):
    """Where long file work reports how far it got."""

    def start(self, name: str, total: int, done: int = 0) -> None:
        """A file begins: ``total`` bytes, of which ``done`` are there already (resumed)."""

    def advance(self, done: int) -> None:
        """``done`` more bytes of the file are there."""


class _Silent:
    def start(self, name: str, total: int, done: int = 0) -> None:
        pass

    def advance(self, done: int) -> None:
        pass


NO_PROGRESS: Progress = _Silent()


def hash_file(path: Path, progress: Progress = NO_PROGRESS) -> str:
    """The sha256 of a file, read in large chunks."""
    digest = hashlib.sha256()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    progress.start(path.name, path.stat().st_size)
    with _storage_errors(path), path.open("rb") as fh:
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
    read_back: ReadBack = "none",
    progress: Progress = NO_PROGRESS,
) -> str:
    """Copy ``src`` to ``dest`` and return its sha256, computed in the same pass.

    ``dest`` appears only complete, fsynced and, when ``expected`` is given, matching it;
    otherwise IntegrityError (naming ``src`` and where ``expected`` came from) and nothing
    is left. Without ``overwrite`` an existing ``dest`` is never replaced
    (FileExistsError).

    ``read_back`` checks what the medium really stores, bypassing the page cache:
    ``"sample"`` reads back 32 blocks spread over the file once it is synced (cheap; catches
    a stick that drops or wraps writes, as counterfeit ones do), ``"all"`` reads back every
    chunk as it is written and hashes it (as long again as the writing, on most disks).
    """
    size = src.stat().st_size
    check_free_space(dest.parent, size, what=dest.name)
    tmp = dest.parent / f".{dest.name}.{os.getpid()}.{secrets.token_hex(4)}.partial"
    progress.start(src.name, size)
    try:
        with (
            _storage_errors(dest),
            src.open("rb", buffering=0) as fin,
            tmp.open("w+b", buffering=0) as fout,
        ):
            digest, back_digest = hashlib.sha256(), hashlib.sha256()
            checked = back_digest if read_back == "all" else None
            write_hashed(_chunks(fin), fout.fileno(), digest, read_back=checked, progress=progress)
            actual, back = digest.hexdigest(), checked.hexdigest() if checked else None
            os.fsync(fout.fileno())
            if read_back == "sample" and not _same_samples(fin.fileno(), fout.fileno(), size):
                back = ""
            src_stat = os.fstat(fin.fileno())  # keep the source's times, as `cp -p` does:
            os.utime(tmp, ns=(src_stat.st_atime_ns, src_stat.st_mtime_ns))  # a change shows
        if expected is not None and actual != expected.lower():
            raise damaged(src, actual, expected, expected_from or "the recorded hash")
        if back is not None and back != actual:
            raise IntegrityError(
                f"The copy of {src.name} in {dest.parent} does not read back as it was "
                "written: the medium may be failing. Try another disk or stick."
            )
        with _storage_errors(dest):
            if overwrite:
                os.replace(tmp, dest)
            else:
                publish_new(tmp, dest)
            fsync_dir(dest.parent)
        return actual
    finally:
        tmp.unlink(missing_ok=True)


def damaged(src: Path, actual: str, expected: str, expected_from: str) -> IntegrityError:
    """The error for a file whose bytes are not those vouched for."""
    return IntegrityError(
        f"{src} is damaged: its sha256 is {actual}, but {expected_from} says {expected}. "
        "It was not taken; get a good copy of it and try again."
    )


def publish_new(tmp: Path, dest: Path) -> None:
    """Rename ``tmp`` to ``dest`` unless ``dest`` exists (FileExistsError): a hard link does
    it atomically; where links are not supported (FAT, exFAT, some shares) ``dest`` is
    claimed with O_EXCL first and then replaced."""
    try:
        os.link(tmp, dest)
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        os.close(os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL))
        os.replace(tmp, dest)
    else:
        tmp.unlink()


def write_hashed(
    chunks: Iterable[bytes],
    out: int,
    digest: hashlib._Hash,
    *,
    read_back: hashlib._Hash | None = None,
    progress: Progress = NO_PROGRESS,
) -> int:
    """Append ``chunks`` to the file ``out`` while one thread hashes them into ``digest``
    and another flushes what was written to the disk (and given ``read_back`` reads it
    back from there and hashes that). Returns the bytes written.

    hashlib and file I/O release the GIL, so this takes about as long as its slowest part
    instead of the sum of all (docs/decisions.md). If ``chunks`` fails (a source pulled
    out, a connection lost), what was written before is also hashed: ``digest`` always
    matches what ``out`` holds.
    """
    hashing: collections.deque[Future[None]] = collections.deque()
    checking: collections.deque[Future[None]] = collections.deque()
    offset = written = os.lseek(out, 0, os.SEEK_END)
    with ThreadPoolExecutor(1) as hasher, ThreadPoolExecutor(1) as checker:
        for chunk in chunks:
            hashing.append(hasher.submit(digest.update, chunk))
            view = memoryview(chunk)
            while view:
                view = view[os.write(out, view) :]
            checking.append(checker.submit(_settle, out, offset, len(chunk), read_back))
            offset += len(chunk)
            progress.advance(len(chunk))
            for queue in (hashing, checking):
                while len(queue) > _IN_FLIGHT:  # bound the chunks held in memory
                    queue.popleft().result()
        for future in (*hashing, *checking):
            future.result()
    return offset - written


_IN_FLIGHT = 4


def _chunks(fin: BinaryIO) -> Iterator[bytes]:
    """The chunks of a source file; a failing source (a stick pulled out) is named as
    such, not taken for a problem of the destination."""
    while True:
        try:
            chunk = fin.read(CHUNK)
        except OSError as exc:
            raise BadRequestError(f"Cannot read {fin.name}: {exc.strerror}") from exc
        if not chunk:
            return
        yield chunk


_SAMPLES, _SAMPLE_BYTES = 32, 1 << 20


def _same_samples(src: int, dest: int, size: int) -> bool:
    """Whether blocks spread over the file (first and last included) read back from the
    medium as they are in the source."""
    step = max(1, (size - _SAMPLE_BYTES) // (_SAMPLES - 1))
    for offset in sorted({min(i * step, max(0, size - _SAMPLE_BYTES)) for i in range(_SAMPLES)}):
        os.posix_fadvise(dest, offset, _SAMPLE_BYTES, os.POSIX_FADV_DONTNEED)
        if os.pread(dest, _SAMPLE_BYTES, offset) != os.pread(src, _SAMPLE_BYTES, offset):
            return False
    return True


def _settle(fd: int, offset: int, length: int, digest: hashlib._Hash | None) -> None:
    """Push what was written so far to the disk (so the final fsync has little left to
    wait for) and, given ``digest``, hash the chunk at ``offset`` as the medium returns it:
    its cached pages are dropped first, so the read comes from the disk, not from memory."""
    os.fdatasync(fd)
    if digest is not None:
        os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)
        digest.update(os.pread(fd, length, offset))


class atomic_writer:
    """Write ``path`` through a temp file in the same folder; fsync and rename on success,
    so readers see the old file or the whole new one, never a part."""

    def __init__(self, path: Path, *, mode: int = 0o644) -> None:
        self.path = path
        self.mode = mode  # mkstemp's 0600 would hide models from a service user
        self._tmp: Path | None = None
        self._fh: IO[bytes] | None = None

    def __enter__(self) -> IO[bytes]:
        with _storage_errors(self.path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        self._tmp = Path(name)
        os.fchmod(fd, self.mode)
        self._fh = os.fdopen(fd, "wb")
        return self._fh

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        assert self._fh is not None and self._tmp is not None
        try:
            with _storage_errors(self.path):
                if exc_type is None:
                    self._fh.flush()
                    os.fsync(self._fh.fileno())
                self._fh.close()
                if exc_type is None:
                    os.replace(self._tmp, self.path)
                    fsync_dir(self.path.parent)
        finally:
            self._tmp.unlink(missing_ok=True)


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
