"""Imports asked of the server (``POST /api/models/import``): jobs with progress, from
allowed folders only.

An import through the API is an administrator's action on the server's own disks, so it
reads only below the folders the configuration allows (``OFFGRID_IMPORT_DIRS``: removable
media and the data folder's ``import`` drop folder by default; ``offgrid import`` on the
box itself has no such limit). It runs in a thread as a job, like a pull: the request can
wait for its outcome or take its id and ask ``/api/imports/{id}`` how far it got.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from offgrid.errors import BadRequestError, NotFoundError, OffGridError, PermissionDeniedError
from offgrid.models.importer import import_found
from offgrid.models.keys import Keys
from offgrid.models.registry import Registry
from offgrid.models.sources import Found, find_candidates

__all__ = ["ImportJob", "ImportJobs", "ImportOrder"]

_KEEP_ENDED = 32  # ended jobs kept for /api/imports

log = logging.getLogger("offgrid.models")


@dataclass(frozen=True)
class ImportOrder:
    """What to import: the fields of ``POST /api/models/import``."""

    source: str
    link: bool = False
    name: str | None = None
    ollama_dir: str | None = None
    allow_untrusted: bool = False


@dataclass(eq=False)
class ImportJob:
    """One import: its state (running, done, failed), the file being copied, and outcomes."""

    id: str
    order: ImportOrder
    status: str = "running"
    file: str = ""
    done_bytes: int = 0
    total_bytes: int = 0
    results: list[dict[str, Any]] = field(default_factory=list)
    note: str = ""
    passed_over: list[str] = field(default_factory=list)
    error: OffGridError | None = None
    started_at: float = field(default_factory=time.time)
    task: asyncio.Task[None] | None = None

    def start(self, name: str, total: int, done: int = 0) -> None:  # atomic_files.Progress
        self.file, self.total_bytes, self.done_bytes = name, total, done

    def advance(self, done: int) -> None:
        self.done_bytes += done

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "source": self.order.source,
            "status": self.status,
            "file": self.file,
            "done_bytes": self.done_bytes,
            "total_bytes": self.total_bytes,
            "results": self.results,
            "note": self.note,
            "passed_over": self.passed_over,
            "error": self.error.message if self.error else None,
            "started_at": self.started_at,
        }


def _inside(path: Path, roots: list[Path]) -> bool:
    """Whether ``path``, symlinks resolved, lies in one of ``roots`` (resolved too)."""
    try:
        real = path.expanduser().resolve()
    except (ValueError, RuntimeError) as exc:  # a NUL byte in it; a symlink loop
        raise BadRequestError(f"{str(path)[:200]!r} is not a usable path ({exc}).") from None
    return any(real.is_relative_to(root.expanduser().resolve()) for root in roots)


class ImportJobs:
    """The server's imports: started, watched and kept for a while after they end."""

    def __init__(self, registry: Registry, keys_dir: Path, roots: list[Path]) -> None:
        self.registry = registry
        self.keys_dir = keys_dir
        self.roots = roots
        self._jobs: dict[str, ImportJob] = {}

    def start(self, order: ImportOrder) -> ImportJob:
        """Check that ``order`` reads only from allowed folders, then run it as a job."""
        for path in filter(None, (order.source, order.ollama_dir)):
            if not _inside(Path(path), self.roots):
                raise PermissionDeniedError(
                    f"The server imports only from {self._allowed()}; {path!r} is not in "
                    "them. Copy the files into one of these (or add its folder to "
                    "OFFGRID_IMPORT_DIRS), or run `offgrid import` on the machine itself."
                )
        resolved = replace(  # what was checked is what is read, even if a link changes
            order,
            source=str(Path(order.source).expanduser().resolve()),
            ollama_dir=str(Path(order.ollama_dir).resolve()) if order.ollama_dir else None,
        )
        job = ImportJob(secrets.token_hex(6), resolved)
        self._forget_old()
        self._jobs[job.id] = job
        job.task = asyncio.get_running_loop().create_task(self._run(job))
        return job

    async def wait(self, job: ImportJob) -> ImportJob:
        """The job once it has ended; its error raised if it failed as a whole."""
        if job.task is not None:
            await asyncio.shield(job.task)
        if job.error is not None:
            raise job.error
        return job

    def _allowed(self) -> str:
        return ", ".join(str(r) for r in self.roots)

    def _outside(self, found: Found) -> None:
        """Refuse the files of ``found`` that lie outside the allowed folders (a link inside
        a folder, pointing out of it, reads a file from anywhere)."""
        kept = []
        for cand in found.candidates:
            paths = [cand.path, *([cand.projector.path] if cand.projector else [])]
            if all(_inside(p, self.roots) for p in paths):
                kept.append(cand)
            else:
                found.refused.append((cand.path, f"it lies outside {self._allowed()}"))
        found.candidates = kept

    def get(self, job_id: str) -> ImportJob:
        job = self._jobs.get(job_id)
        if job is None:
            raise NotFoundError(f"No import with id {job_id!r} (ended ones are kept a while).")
        return job

    def list(self) -> list[dict[str, Any]]:
        return [job.as_dict() for job in self._jobs.values()]

    async def close(self) -> None:
        """Wait for the imports still running: a copy stopped midway leaves only a
        temp file, but one that finishes is better."""
        running = [j.task for j in self._jobs.values() if j.task and not j.task.done()]
        await asyncio.gather(*running, return_exceptions=True)

    async def _run(self, job: ImportJob) -> None:
        order = job.order

        def work() -> None:
            found = find_candidates(
                order.source,
                Keys(self.keys_dir),
                allow_untrusted=order.allow_untrusted,
                ollama_dir=Path(order.ollama_dir) if order.ollama_dir else None,
            )
            self._outside(found)
            job.note, job.passed_over = found.note, [str(p) for p in found.passed_over]
            for report in import_found(
                self.registry, found, link=order.link, name=order.name, progress=job
            ):
                job.results.append(report.as_dict())

        try:
            await asyncio.to_thread(work)
            job.status = "done"
        except OffGridError as exc:
            job.status, job.error = "failed", exc
        except Exception as exc:  # a disk error, a bug: the job ends all the same
            log.exception("import %s failed", job.id)
            job.status = "failed"
            job.error = OffGridError(f"The import failed ({type(exc).__name__}: {exc}).")

    def _forget_old(self) -> None:
        ended = [i for i, j in self._jobs.items() if j.status != "running"]
        for job_id in ended[: max(0, len(ended) - _KEEP_ENDED)]:
            del self._jobs[job_id]
