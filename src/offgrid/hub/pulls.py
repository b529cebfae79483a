"""Downloads the server runs for its clients (``/api/pulls``), with progress to watch.

A pull runs in a worker thread (``download.fetch_model``) and keeps going when the client
that started it goes away: the dashboard can reload and watch it again. Asking for a
model that is already being pulled joins that pull. Each change of state is an event;
watchers get every state change and progress at most every ``EVERY`` seconds, in order,
ending with the final state (done, present, failed or cancelled).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from offgrid.errors import Cancelled, NotFoundError, OffGridError
from offgrid.hub.client import RemoteModel
from offgrid.hub.download import Origin, fetch_model
from offgrid.models.registry import Registry

__all__ = ["FINAL", "Pull", "Pulls"]

log = logging.getLogger("offgrid.hub")

FINAL = ("done", "present", "failed", "cancelled")
EVERY = 0.25  # seconds between progress events
_KEEP = 20  # finished pulls still listed


@dataclass
class Pull:
    """One model being downloaded, as watchers see it."""

    id: str
    remote: RemoteModel
    status: str = "queued"
    done: int = 0
    message: str = ""
    error: dict[str, Any] | None = None
    started: float = field(default_factory=time.time)
    finished: float | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    _resumed: int = 0  # bytes there when the current file began: not fetched by this run
    _began: float = field(default_factory=time.monotonic)

    def as_dict(self) -> dict[str, Any]:
        total = self.remote.size
        elapsed = time.monotonic() - self._began
        speed = (self.done - self._resumed) / elapsed if elapsed > 0 else 0.0
        eta = (total - self.done) / speed if speed > 0 and self.status == "downloading" else None
        return {
            "id": self.id,
            "model_id": self.remote.model_id,
            "repo": self.remote.repo,
            "quantization": self.remote.quant,
            "files": [f.name for f in self.remote.downloads],
            "status": self.status,
            "total": total,
            "completed": self.done,
            "percent": round(100 * self.done / total, 1) if total else 100.0,
            "bytes_per_second": round(speed),
            "eta_seconds": round(eta, 1) if eta is not None else None,
            "message": self.message,
            "error": self.error,
            "started_at": self.started,
            "finished_at": self.finished,
        }


class Pulls:
    """The server's pulls: start or join, watch, list, cancel."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._pulls: dict[str, Pull] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._watchers: dict[str, list[asyncio.Queue[dict[str, Any]]]] = {}

    def start(
        self, remote: RemoteModel, *, rate: int | None = None, origin: Origin | None = None
    ) -> Pull:
        """A pull of ``remote`` (from the Hub, or ``origin``): the running one if there is
        one, else a new one."""
        for pull in self._pulls.values():
            if pull.remote == remote and pull.status not in FINAL:
                return pull
        pull = Pull(secrets.token_hex(6), remote)
        self._pulls[pull.id] = pull
        self._forget_old()
        task = asyncio.create_task(self._run(pull, rate, origin))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return pull

    def get(self, pull_id: str) -> Pull:
        try:
            return self._pulls[pull_id]
        except KeyError:
            raise NotFoundError(
                f"There is no pull {pull_id!r}; GET /api/pulls lists them."
            ) from None

    def list(self) -> list[dict[str, Any]]:
        return [p.as_dict() for p in self._pulls.values()]

    def cancel(self, pull_id: str) -> Pull:
        pull = self.get(pull_id)
        pull.stop.set()
        return pull

    async def watch(self, pull: Pull) -> AsyncIterator[dict[str, Any]]:
        """The pull's state now, then each change, until the final one."""
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._watchers.setdefault(pull.id, []).append(queue)
        try:
            state = pull.as_dict()
            while True:
                yield state
                if state["status"] in FINAL:
                    return
                state = await queue.get()
        finally:
            self._watchers[pull.id].remove(queue)

    async def close(self) -> None:
        """Stop every pull (their partial files stay, to resume) and wait for them."""
        for pull in self._pulls.values():
            pull.stop.set()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _run(self, pull: Pull, rate: int | None, origin: Origin | None) -> None:
        loop = asyncio.get_running_loop()
        watcher = _Progress(pull, lambda: loop.call_soon_threadsafe(self._emit, pull))
        self._set(pull, "downloading")
        try:
            fetched = await asyncio.to_thread(
                fetch_model,
                pull.remote,
                self.registry,
                progress=watcher,
                notes=watcher.note,
                rate=rate,
                stop=pull.stop,
                origin=origin,
            )
            pull.done = pull.remote.size
            self._set(pull, "done" if fetched else "present")
        except Cancelled as exc:
            self._set(pull, "cancelled", exc.message)
        except OffGridError as exc:
            pull.error = {"message": exc.message, "type": exc.type, "code": exc.code}
            self._set(pull, "failed", exc.message)
        except Exception as exc:  # a bug, or a peer's client closed under it: say so, end
            log.exception("pull %s failed", pull.id)
            message = f"The pull stopped: {exc}. What arrived is kept: pull again to resume."
            pull.error = {"message": message, "type": "server_error", "code": None}
            self._set(pull, "failed", message)

    def _set(self, pull: Pull, status: str, message: str = "") -> None:
        pull.status, pull.message = status, message or pull.message
        if status in FINAL:
            pull.finished = time.time()
        self._emit(pull)

    def _emit(self, pull: Pull) -> None:
        state = pull.as_dict()
        for queue in self._watchers.get(pull.id, []):
            queue.put_nowait(state)

    def _forget_old(self) -> None:
        finished = [p for p in self._pulls.values() if p.status in FINAL]
        for pull in finished[:-_KEEP] if len(finished) > _KEEP else []:
            del self._pulls[pull.id]
            self._watchers.pop(pull.id, None)


class _Progress:
    """``atomic_files.Progress`` for a pull: counts bytes over all its files and asks for an
    event at most every ``EVERY`` seconds (called from the download's thread)."""

    def __init__(self, pull: Pull, changed: Any) -> None:
        self.pull, self.changed = pull, changed
        self.files = {f.base_name: f for f in pull.remote.downloads}
        self._last = 0.0

    def start(self, name: str, total: int, done: int = 0) -> None:
        pull = self.pull
        files = pull.remote.downloads
        before = [f.size for f in files[: files.index(self.files[name])]]
        pull.done = sum(before) + done
        pull._resumed, pull._began = pull.done, time.monotonic()

    def advance(self, done: int) -> None:
        self.pull.done += done
        now = time.monotonic()
        if now - self._last >= EVERY:
            self._last = now
            self.changed()

    def note(self, message: str) -> None:
        self.pull.message = message
        self.changed()
