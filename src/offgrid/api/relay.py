"""Forward OpenAI requests to the model's engine and relay its answer as it comes.

The body goes upstream byte for byte (DESIGN.md decision 8): every field llama-server
understands keeps working, and engines run with ``--alias <model id>`` so their chunks
already carry our id. The per-chunk path does no work beyond passing bytes on, because on a
small box every microsecond the relay spends is taken from the engine.

Engine quirks handled here (DESIGN.md, "Engine facts"): llama-server closes the socket after
every streamed response without saying so, so stream requests send ``Connection: close``;
it also drops idle keep-alive connections after 5 s, so pooled ones expire after 4 s, and a
request that fails on a dead socket before any byte came back is retried once.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import aiohttp
from fastapi import Response
from fastapi.responses import StreamingResponse

from offgrid.api.errors import error_body, error_event
from offgrid.errors import EngineError
from offgrid.scheduler import Lease, Scheduler

__all__ = ["Relay"]

_JSON = {"Content-Type": "application/json"}
_STREAM = {"Content-Type": "application/json", "Connection": "close"}
_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_RETRYABLE = (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)


class Relay:
    """Owns the HTTP client to the engines; one per server."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self._http: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=4.0)
        self._http = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            auto_decompress=False,
        )

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()

    async def forward(self, path: str, body: bytes, model_id: str, stream: bool) -> Response:
        """Send ``body`` to ``path`` on the engine of ``model_id``; stream back if asked."""
        upstream, lease = await self._send(path, body, model_id, stream)
        if upstream.status != 200 or not stream:
            try:
                data = await upstream.read()
            except aiohttp.ClientError as exc:
                raise _engine_failed(model_id, exc) from exc
            finally:
                upstream.release()
                lease.release()
            if upstream.status != 200:
                return _engine_error(upstream.status, data)
            return Response(data, media_type="application/json")
        return StreamingResponse(
            self._relay(upstream, lease), media_type="text/event-stream", headers=_SSE_HEADERS
        )

    async def _send(
        self, path: str, body: bytes, model_id: str, stream: bool
    ) -> tuple[aiohttp.ClientResponse, Lease]:
        assert self._http is not None
        for attempt in range(2):
            lease = await self.scheduler.acquire(model_id)
            engine = lease.engine
            try:
                upstream = await self._http.post(
                    engine.url + path, data=body, headers=_STREAM if stream else _JSON
                )
                return upstream, lease
            except (aiohttp.ClientConnectorError, *_RETRYABLE) as exc:
                lease.release()
                if attempt:
                    raise _engine_failed(model_id, exc) from exc
                if isinstance(exc, aiohttp.ClientConnectorError):
                    # refused: the engine is likely dead; let its exit be noticed so the
                    # retry's acquire() starts a new one
                    await engine.wait_exited(1.0)
            except BaseException:
                lease.release()
                raise
        raise AssertionError("unreachable")

    async def _relay(self, upstream: aiohttp.ClientResponse, lease: Lease) -> AsyncIterator[bytes]:
        try:
            async for chunk in upstream.content.iter_any():
                yield chunk
        except aiohttp.ClientError as exc:
            yield error_event(_engine_failed(lease.model_id, exc))
        finally:
            upstream.close()  # closing the socket makes llama-server cancel the generation
            lease.release()


def _engine_failed(model_id: str, exc: BaseException) -> EngineError:
    return EngineError(
        f"The engine for '{model_id}' failed during the request "
        f"({type(exc).__name__}: {exc or 'connection lost'}). It restarts on the next "
        "request; the server log has its last lines."
    )


def _engine_error(status: int, data: bytes) -> Response:
    """The engine's own error, reshaped to OpenAI's ``{"error": {...}}``."""
    message, type_ = data.decode("utf-8", errors="replace")[:2000], "invalid_request_error"
    try:
        err = json.loads(data).get("error", {})
        message = str(err.get("message", message))
        type_ = str(err.get("type", type_))
    except (ValueError, AttributeError):
        pass
    if status >= 500:
        type_ = "server_error"
    return Response(
        json.dumps(error_body(message, type_)), status_code=status, media_type="application/json"
    )
