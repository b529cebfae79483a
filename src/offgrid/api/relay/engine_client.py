"""The connections to the engines: send a request to a leased engine, retry a dead socket.

The body goes upstream byte for byte (DESIGN.md decision 8): every field llama-server
understands keeps working, and engines run with ``--alias <model id>`` so their chunks
already carry our id and need no rewriting.

Engine quirks handled here (DESIGN.md, "Engine facts"): llama-server closes the socket after
every streamed response without saying so, so each stream has a raw connection of its own
and says ``Connection: close``;
it also drops idle keep-alive connections after 5 s, so pooled ones expire after 4 s, and a
request that fails on a dead socket before any byte came back is retried once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import aiohttp

from offgrid.api.dialects import task_of
from offgrid.api.relay.engine_stream import EngineStream, connect, send_request
from offgrid.engine.process import Engine
from offgrid.errors import EngineError
from offgrid.models.model_info import Task
from offgrid.scheduler import Lease, Scheduler

__all__ = ["EngineClient", "engine_failed"]

_RETRYABLE = (
    aiohttp.ClientConnectorError,
    aiohttp.ServerDisconnectedError,
    aiohttp.ClientOSError,
    ConnectionError,  # raw connections (streams): refused, or reset before the head
)
T = TypeVar("T")
_SPARE_MAX_AGE = 4.0


class EngineClient:
    """Owns the connections to the engines (pooled for whole answers, one raw connection per
    stream); one per server."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self._http: aiohttp.ClientSession | None = None
        self._fresh: aiohttp.ClientSession | None = None
        self._spares: dict[str, EngineStream] = {}
        self._refilling: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        def session(connector: aiohttp.TCPConnector) -> aiohttp.ClientSession:
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
            return aiohttp.ClientSession(
                connector=connector, timeout=timeout, auto_decompress=False
            )

        self._http = session(aiohttp.TCPConnector(limit=0, keepalive_timeout=4.0))
        # retries never take a pooled socket: after an engine dies the pool may hold
        # several dead ones, and each would fail in turn
        self._fresh = session(aiohttp.TCPConnector(limit=0, force_close=True))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for spare in self._spares.values():
            spare.close()
        self._spares.clear()
        for http in (self._http, self._fresh):
            if http is not None:
                await http.close()

    async def post(
        self,
        path: str,
        body: bytes,
        model_id: str,
        *,
        keep_alive: float | None = None,
        content_type: str = "application/json",
    ) -> tuple[aiohttp.ClientResponse, Lease]:
        """Send ``body`` to ``path`` on the engine of ``model_id`` through the pooled client."""
        pooled, fresh = self._http, self._fresh
        assert pooled is not None and fresh is not None

        async def post(engine: Engine, retry: bool) -> aiohttp.ClientResponse:
            http = fresh if retry else pooled
            headers = {"Content-Type": content_type, "Authorization": engine.auth_header}
            return await http.post(engine.url + path, data=body, headers=headers)

        return await self._with_engine(model_id, task_of(path), post, keep_alive)

    async def open_stream(
        self, path: str, body: bytes, model_id: str, *, keep_alive: float | None = None
    ) -> tuple[EngineStream, Lease]:
        """Send a streamed request on a raw connection of its own (``engine_stream``)."""

        async def start(engine: Engine, retry: bool) -> EngineStream:
            spare = None if retry else self._take_spare(engine)
            stream = spare or await connect(engine.host, engine.port)
            self._refill_spare(engine)
            await send_request(stream, engine, path, body)
            return stream

        return await self._with_engine(model_id, task_of(path), start, keep_alive)

    def _take_spare(self, engine: Engine) -> EngineStream | None:
        spare = self._spares.pop(engine.url, None)
        if spare is not None and not spare.fresh(_SPARE_MAX_AGE):
            spare.close()
            return None
        return spare

    def _refill_spare(self, engine: Engine) -> None:
        """Open the next stream's connection now, off its critical path.

        A connect to llama-server costs about 0.24 ms here, a sixth of what the relay adds
        to the first token; llama-server streams close their connection, so each stream
        needs a new one. One idle spare per engine, dropped after 4 s (the engine closes
        idle connections after 5 s).
        """
        if engine.url in self._spares or engine.url in self._refilling:
            return
        for url in [u for u, s in self._spares.items() if not s.fresh(_SPARE_MAX_AGE)]:
            self._spares.pop(url).close()

        async def refill() -> None:
            try:
                self._spares[engine.url] = await connect(engine.host, engine.port)
            except OSError:
                pass  # the engine went away; the next stream connects itself
            finally:
                self._refilling.discard(engine.url)

        self._refilling.add(engine.url)
        task = asyncio.get_running_loop().create_task(refill())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _with_engine(
        self,
        model_id: str,
        task: Task | None,
        send: Callable[[Engine, bool], Awaitable[T]],
        keep_alive: float | None,
    ) -> tuple[T, Lease]:
        """Run ``send`` against a leased engine; again on a fresh lease if the socket was dead.

        The first try may take a pooled or spare socket that died with its engine; retries
        use fresh connections, and when one of those fails too (refused, or reset by an
        engine caught dying) the scheduler discards the engine, so that the next
        ``acquire()`` starts a new one.
        """
        attempts = 3
        for attempt in range(attempts):
            lease = await self.scheduler.acquire(model_id, keep_alive=keep_alive, task=task)
            try:
                return await send(lease.engine, attempt > 0), lease
            except _RETRYABLE as exc:
                lease.release()
                if attempt == attempts - 1:
                    raise engine_failed(model_id, exc) from exc
                refused = isinstance(exc, aiohttp.ClientConnectorError | ConnectionRefusedError)
                if refused or attempt > 0:  # a fresh connection failed: the engine is gone
                    await self.scheduler.discard(lease.engine)
            except BaseException:
                lease.release()
                raise
        raise AssertionError("unreachable")


def engine_failed(model_id: str, exc: BaseException) -> EngineError:
    return EngineError(
        f"The engine for '{model_id}' failed during the request "
        f"({type(exc).__name__}: {exc or 'connection lost'}). It restarts on the next "
        "request; the server log has its last lines."
    )
