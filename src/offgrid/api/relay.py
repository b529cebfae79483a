"""The client side of the proxy: send a request to the model's engine, hand back its answer.

The body goes upstream byte for byte (DESIGN.md decision 8): every field llama-server
understands keeps working, and engines run with ``--alias <model id>`` so their chunks
already carry our id and need no rewriting.

Engine quirks handled here (DESIGN.md, "Engine facts"): llama-server closes the socket after
every streamed response without saying so, so stream requests send ``Connection: close``;
it also drops idle keep-alive connections after 5 s, so pooled ones expire after 4 s, and a
request that fails on a dead socket before any byte came back is retried once.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import TypeVar

import aiohttp

from offgrid.api.errors import error_body
from offgrid.api.splice import EngineStream, connect, send_request
from offgrid.engine.process import Engine
from offgrid.errors import EngineError
from offgrid.scheduler import Lease, Scheduler

__all__ = ["Relay", "Upstream", "engine_failed", "reshape_error"]

_JSON = {"Content-Type": "application/json"}
_STREAM = {"Content-Type": "application/json", "Connection": "close"}
_RETRYABLE = (
    aiohttp.ClientConnectorError,
    aiohttp.ServerDisconnectedError,
    aiohttp.ClientOSError,
    ConnectionError,  # raw connections (splice): refused, or reset before the head
)
T = TypeVar("T")
_SPARE_MAX_AGE = 4.0


class Upstream:
    """An engine's response in progress, holding the lease on that engine until closed."""

    def __init__(self, response: aiohttp.ClientResponse, lease: Lease) -> None:
        self.response = response
        self.lease = lease
        self.closed_by_us = False

    async def read_whole(self) -> tuple[int, bytes]:
        """(status, body) of a non-streamed answer; engine errors reshaped to OpenAI's."""
        try:
            data = await self.response.read()
        except aiohttp.ClientError as exc:
            raise engine_failed(self.lease.model_id, exc) from exc
        finally:
            self.response.release()
            self.lease.release()
        status = self.response.status
        return status, data if status == 200 else reshape_error(status, data)

    def close(self) -> None:
        """Drop the connection (the engine then cancels the generation) and the lease."""
        if not self.response.closed:
            self.closed_by_us = True
            self.response.close()
        self.lease.release()


class Relay:
    """Owns the HTTP client to the engines; one per server."""

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

    async def open(
        self,
        path: str,
        body: bytes,
        model_id: str,
        stream: bool,
        *,
        keep_alive: float | None = None,
    ) -> Upstream:
        """Send ``body`` to ``path`` on the engine of ``model_id`` through the pooled client."""
        pooled, fresh = self._http, self._fresh
        assert pooled is not None and fresh is not None
        headers = _STREAM if stream else _JSON

        async def post(engine: Engine, retry: bool) -> aiohttp.ClientResponse:
            http = fresh if retry else pooled
            return await http.post(engine.url + path, data=body, headers=headers)

        response, lease = await self._with_engine(model_id, post, keep_alive)
        return Upstream(response, lease)

    async def open_stream(
        self, path: str, body: bytes, model_id: str, *, keep_alive: float | None = None
    ) -> tuple[EngineStream, Lease]:
        """Send a streamed request on a fresh raw connection, for splicing (``splice``)."""

        async def start(engine: Engine, retry: bool) -> EngineStream:
            spare = None if retry else self._take_spare(engine)
            stream = spare or await connect(engine.host, engine.port)
            self._refill_spare(engine)
            await send_request(stream, engine.host, engine.port, path, body)
            return stream

        return await self._with_engine(model_id, start, keep_alive)

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
            lease = await self.scheduler.acquire(model_id, keep_alive=keep_alive)
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


def reshape_error(status: int, data: bytes) -> bytes:
    """The engine's own error as OpenAI's ``{"error": {message, type, param, code}}``."""
    message, type_ = data.decode("utf-8", errors="replace")[:2000], "invalid_request_error"
    try:
        err = json.loads(data).get("error", {})
        message = str(err.get("message", message))
        type_ = str(err.get("type", type_))
    except (ValueError, AttributeError):
        pass
    if status >= 500:
        type_ = "server_error"
    return json.dumps(error_body(message, type_)).encode()
