"""Downloading a model from the Hub so that every byte fetched counts and is verified.

Each file is written to ``.NAME.SHA.download`` beside its destination (hidden: listings
skip it), kept across failures and runs: a broken transfer, or a killed process, resumes
from where it stopped with an HTTP Range request, after hashing what is already there.
While the bytes arrive, one thread hashes them and another flushes them to the disk (the
pipeline of ``atomic_files.write_hashed``), so verifying costs no extra pass. Lost connections
are retried with backoff; the download gives up only after ``RETRIES`` attempts in a row
that brought no byte. The file becomes a model only once its size and sha256 are those the
Hub published for it (its LFS object id); a damaged file is discarded and nothing is
registered. A split model's parts are fetched one after another and registered together;
a vision model's projector is fetched first, as ``mmproj-<model id>.gguf`` (``pairing``).

The bytes go through the ``httpx2`` client of ``huggingface_hub`` (``get_session()``), so
downloads and the Hub's API calls (``hub.client``) share its proxies, headers and
connections. A paired peer is another ``Origin`` (``p2p.pull``): the same transfer, resumed
and verified the same way, over its pinned mutual-TLS client.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from offgrid.atomic_files import (
    CHUNK,
    NO_PROGRESS,
    Progress,
    check_free_space,
    fsync_dir,
    hash_file,
    publish_new,
    write_hashed,
)
from offgrid.errors import (
    BadRequestError,
    Cancelled,
    ConflictError,
    IntegrityError,
    NotFoundError,
    UnreachableError,
)
from offgrid.hub.client import TIMEOUT, HubFile, RemoteModel, auth_headers, file_url
from offgrid.models.bundle import safe_file_name
from offgrid.models.pairing import projector_name

if TYPE_CHECKING:
    import httpx2

    from offgrid.models.registry import Registry

__all__ = ["RETRIES", "Origin", "fetch_model", "hub_origin"]

RETRIES = 8
_BACKOFF_MAX = 30.0


def _quiet(_message: str) -> None:
    pass


@dataclass(frozen=True)
class Origin:
    """Where a model's files come from, and how to ask for them."""

    name: str  # for messages: "the Hub", "peer lab-2"
    session: httpx2.Client
    url: Callable[[HubFile], str]
    record: Mapping[str, str]  # the registry's origin of each file (its name added)
    headers: Mapping[str, str] = field(default_factory=dict)
    denied: str = ""  # what to do when it answers 401 or 403


def hub_origin(remote: RemoteModel) -> Origin:
    """The Hub, through ``huggingface_hub``'s own client (not ours to close)."""
    from huggingface_hub import get_session

    return Origin(
        "the Hub",
        get_session(),
        lambda f: file_url(remote.repo, remote.revision, f.name),
        {"kind": "huggingface", "repo": remote.repo, "revision": remote.revision},
        auth_headers(),
        "the repository is gated or private. Accept its terms on the Hub and set HF_TOKEN "
        "(or `hf auth login`).",
    )


def fetch_model(
    remote: RemoteModel,
    registry: Registry,
    *,
    progress: Progress = NO_PROGRESS,
    notes: Callable[[str], None] = _quiet,
    rate: int | None = None,
    retries: int = RETRIES,
    stop: threading.Event | None = None,
    origin: Origin | None = None,
) -> bool:
    """Download ``remote`` into the models folder, verified, and register it with its
    origin. Returns False when it was there already (nothing fetched), True otherwise.

    ``rate`` caps the speed in bytes per second; ``notes`` hears about retries; ``stop``
    set from another thread cancels (Cancelled), keeping what arrived; ``origin`` is the
    Hub unless given.
    """
    source = origin or hub_origin(remote)
    folder = registry.models_dir
    folder.mkdir(parents=True, exist_ok=True)
    names = [f.base_name for f in remote.files]
    if remote.projector is not None:
        names.insert(0, projector_name(remote.model_id))
    targets = [folder / safe_file_name(name, remote.repo) for name in names]
    files = list(zip(remote.downloads, targets, strict=True))
    todo = [(f, t) for f, t in files if not _have(registry, f, t)]
    for hub_file, target in files:
        if (hub_file, target) not in todo:  # a crash between its link and its unlink
            _partial(hub_file, target).unlink(missing_ok=True)
    if not todo:
        return False
    left = sum(f.size - _size(_partial(f, t)) for f, t in todo)
    check_free_space(folder, left, what=remote.model_id)
    for hub_file, target in todo:
        job = _Transfer(source, hub_file, target, progress, notes, rate, retries, stop)
        job.run()
    for hub_file, target in files:
        registry.record(target, hub_file.sha256, origin={**source.record, "file": hub_file.name})
    return True


def _have(registry: Registry, hub_file: HubFile, target: Path) -> bool:
    """Whether ``target`` already holds ``hub_file``; ConflictError if it holds another."""
    if not target.exists():
        return False
    digest = registry.vouched(target) or hash_file(target)
    if digest != hub_file.sha256:
        raise ConflictError(
            f"{target} exists and is not {hub_file.name} (sha256 {digest[:16]}…, the one "
            f"offered is {hub_file.sha256[:16]}…). Remove it first (`offgrid remove`) or keep it."
        )
    return True


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _partial(hub_file: HubFile, target: Path) -> Path:
    """Where the bytes of ``hub_file`` gather until they are all there and verified."""
    return target.parent / f".{target.name}.{hub_file.sha256[:16]}.download"


class _Transfer:
    """One file's download: attempts, each resuming where the last one stopped."""

    def __init__(
        self,
        origin: Origin,
        hub_file: HubFile,
        target: Path,
        progress: Progress,
        notes: Callable[[str], None],
        rate: int | None,
        retries: int,
        stop: threading.Event | None,
    ) -> None:
        self.origin, self.url, self.file, self.target = (
            origin,
            origin.url(hub_file),
            hub_file,
            target,
        )
        self.progress, self.notes, self.rate, self.retries = progress, notes, rate, retries
        self.stop = stop or threading.Event()
        self.digest = hashlib.sha256()  # of what the partial file holds

    def run(self) -> None:
        partial = _partial(self.file, self.target)
        fd = os.open(partial, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            _lock(fd, self.file.base_name)
            self._resume(fd)
            self._fetch(fd)
            actual = self.digest.hexdigest()
            if actual != self.file.sha256:
                os.unlink(partial)
                raise IntegrityError(
                    f"{self.file.name} arrived damaged: its sha256 is {actual}, "
                    f"but {self.origin.name} says {self.file.sha256}. It was discarded and "
                    "nothing was installed; run the same command again to fetch it anew."
                )
            os.fsync(fd)
            try:
                publish_new(partial, self.target)
            except FileExistsError as exc:
                raise ConflictError(f"{self.target} appeared while downloading it.") from exc
            fsync_dir(self.target.parent)
        finally:
            os.close(fd)

    def _resume(self, fd: int) -> None:
        """Hash what earlier runs left (all of it, unless it is longer than the file can be)."""
        have = os.fstat(fd).st_size
        if have > self.file.size:
            os.ftruncate(fd, 0)
            have = 0
        done = 0
        while done < have:
            block = os.pread(fd, min(CHUNK, have - done), done)
            self.digest.update(block)
            done += len(block)
        self.progress.start(self.file.base_name, self.file.size, have)
        if have:
            self.notes(f"{self.file.base_name}: resuming at {_pct(have, self.file.size)}")

    def _fetch(self, fd: int) -> None:
        """Bring the rest of the file, retrying lost connections with backoff."""
        import httpx2

        failures = 0
        while (offset := os.fstat(fd).st_size) < self.file.size:
            if self.stop.is_set():
                raise Cancelled(f"The download of {self.file.name} was cancelled.")
            try:
                self._attempt(fd, offset)
                error = "the connection closed early"
            except (httpx2.HTTPError, OSError) as exc:
                if isinstance(exc, OSError) and not _network(exc):
                    raise
                error = type(exc).__name__
            except _Retry as exc:
                error = str(exc)
            now = os.fstat(fd).st_size
            if now >= self.file.size:
                break
            failures = 0 if now > offset else failures + 1
            if failures > self.retries:
                raise UnreachableError(
                    f"The download of {self.file.name} stopped at {_pct(now, self.file.size)} "
                    f"({error}) and {self.retries} retries brought nothing more. What arrived "
                    "is kept: run the same command again to resume."
                )
            wait = min(_BACKOFF_MAX, 2.0 ** max(0, failures - 1)) if failures else 0.0
            self.notes(
                f"{self.file.base_name}: {error} at {_pct(now, self.file.size)}; "
                + (f"retrying in {wait:.0f} s" if wait else "resuming")
            )
            if self.stop.wait(wait):
                raise Cancelled(f"The download of {self.file.name} was cancelled.")

    def _attempt(self, fd: int, offset: int) -> None:
        import httpx2

        headers = {**self.origin.headers, **({"Range": f"bytes={offset}-"} if offset else {})}
        timeout = httpx2.Timeout(None, connect=TIMEOUT[0], read=TIMEOUT[1])
        session = self.origin.session
        with session.stream("GET", self.url, headers=headers, timeout=timeout) as resp:
            if resp.status_code == 200 and offset:  # the server ignored the range: start over
                os.ftruncate(fd, 0)
                self.digest = hashlib.sha256()
                self.progress.start(self.file.base_name, self.file.size)
                offset = 0
            elif resp.status_code not in (200, 206):
                _refuse(resp, self.file, self.origin)
            body = self._body(resp, self.file.size - offset)
            write_hashed(body, fd, self.digest, progress=self.progress)

    def _body(self, resp: httpx2.Response, room: int) -> Iterator[bytes]:
        """The response's bytes as sent (not decoded) in chunks, at most ``rate`` per second
        and no more than ``room`` (a source that sends on does not fill the disk). When the
        connection breaks, what arrived before is handed over first: every byte received
        counts."""
        began, sent = time.monotonic(), 0
        buf = bytearray()
        blocks = resp.iter_raw()  # each read from the socket, as it arrives
        while not self.stop.is_set() and sent < room:
            try:
                block = next(blocks, b"")
            except Exception:
                if buf:
                    yield bytes(buf)
                raise
            if not block:
                break
            block = block[: room - sent]
            buf += block
            sent += len(block)
            if len(buf) >= CHUNK:
                yield bytes(buf)
                buf.clear()
            if self.rate and (ahead := sent / self.rate - (time.monotonic() - began)) > 0:
                if buf:
                    yield bytes(buf)
                    buf.clear()
                time.sleep(ahead)
        if buf:
            yield bytes(buf)


class _Retry(Exception):
    """A failure worth another attempt (the server busy or failing for now)."""


def _refuse(resp: httpx2.Response, hub_file: HubFile, origin: Origin) -> None:
    """Raise what an unexpected status means: worth retrying, or final."""
    status = resp.status_code
    if status == 429 or status >= 500:
        raise _Retry(f"HTTP {status}")
    if status in (401, 403):
        raise BadRequestError(
            f"{origin.name} refused {hub_file.name} (HTTP {status}): {origin.denied}"
        )
    if status == 404:
        raise NotFoundError(f"{hub_file.name} is not offered by {origin.name} any more.")
    raise UnreachableError(f"{origin.name} answered HTTP {status} for {hub_file.name}.")


def _lock(fd: int, name: str) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        raise ConflictError(f"{name} is being downloaded by another process already.") from exc


def _network(exc: OSError) -> bool:
    """Whether an OSError came from the connection (not from the disk)."""
    import errno

    return exc.errno in (None, errno.ECONNRESET, errno.ECONNABORTED, errno.EPIPE, errno.ETIMEDOUT)


def _pct(done: int, total: int) -> str:
    return f"{100 * done / total:.0f} %" if total else "0 %"
