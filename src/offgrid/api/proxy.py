"""The hot path: the three proxied OpenAI routes as plain ASGI, in front of FastAPI.

Every streamed token passes through here, and on a small box each microsecond the relay
spends is taken from the engine. Behind FastAPI each chunk crossed a generator, Starlette's
StreamingResponse and two ``send`` wrappers (error and exception middleware); here a chunk
read from the engine goes straight to uvicorn's ``send`` (docs/decisions.md has the
figures). Everything else, and the OpenAPI schema, stays with FastAPI.

A client that disconnects is noticed by a watcher on ``receive()``, which closes the
upstream response; closing the socket makes llama-server cancel the generation.

Every request, proxied or not, is counted here for ``/metrics`` (route, status, duration);
for completions the engine's token counts are read from the body, or from the last few
pieces of a stream (kept by reference, not copied), once it has ended.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from offgrid.api.errors import error_event, error_json
from offgrid.api.metrics import Metrics, completion_facts
from offgrid.api.relay import Relay, Upstream, engine_failed, reshape_error
from offgrid.api.splice import EngineStream, client_transport
from offgrid.config import parse_duration
from offgrid.errors import BadRequestError, ConfigError, OffGridError, PayloadTooLargeError

__all__ = ["ROUTES", "ProxyApp", "ProxyRequest", "parse_request"]

log = logging.getLogger("offgrid.api")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# path → the field a request must have besides "model"
ROUTES = {
    "/v1/chat/completions": "messages",
    "/v1/completions": "prompt",
    "/v1/embeddings": "input",
}

_JSON_HEADERS = [(b"content-type", b"application/json")]
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


@dataclass(frozen=True)
class ProxyRequest:
    """What OffGrid reads of a request body; the body itself goes upstream unchanged."""

    model: str
    stream: bool
    keep_alive: float | None  # Ollama-style per-request override, in seconds


def parse_request(body: bytes, required: str) -> ProxyRequest:
    """The fields OffGrid owns; BadRequestError for what it cannot accept."""
    try:
        payload = json.loads(body)
    except ValueError as exc:
        raise BadRequestError(f"The request body is not valid JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise BadRequestError("The request body must be a JSON object.")
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequestError("'model' is required: the id of an installed model.", param="model")
    if required not in payload:
        raise BadRequestError(f"'{required}' is required.", param=required)
    stream = payload.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise BadRequestError("'stream' must be true or false.", param="stream")
    keep_alive = payload.get("keep_alive")
    try:
        seconds = None if keep_alive is None else parse_duration(keep_alive)
    except ConfigError as exc:
        raise BadRequestError(exc.message, param="keep_alive") from None
    return ProxyRequest(model, stream is True, seconds)


async def _read_body(receive: Receive, limit: int, declared: int) -> bytes:
    if declared > limit:
        raise PayloadTooLargeError(f"The request body is larger than {limit} bytes.")
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionResetError("client went away")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(f"The request body is larger than {limit} bytes.")
        parts.append(chunk)
        if not message.get("more_body"):
            return b"".join(parts)


async def _send_whole(
    send: Send, status: int, body: bytes, headers: dict[str, str] | None = None
) -> None:
    raw = _JSON_HEADERS + [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class ProxyApp:
    """ASGI entry point: proxied routes handled here, everything else by ``api``."""

    def __init__(self, api: ASGIApp, state: Any) -> None:
        self.api = api
        self.state = state  # FastAPI's app.state, filled by its lifespan

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.api(scope, receive, send)
            return
        began = time.perf_counter()
        required = ROUTES.get(scope["path"])
        if required is None or scope["method"] != "POST":
            status = await self._api(scope, receive, send)
            route = getattr(scope.get("route"), "path", "unmatched")  # a template, not the path
        else:
            status = await self._proxied(scope, receive, send, required, began)
            route = scope["path"]
        if self._metrics is not None:
            self._metrics.request(route, status, time.perf_counter() - began)

    @property
    def _metrics(self) -> Metrics | None:
        metrics: Metrics | None = getattr(self.state, "metrics", None)  # set by the lifespan
        return metrics

    async def _api(self, scope: Scope, receive: Receive, send: Send) -> int:
        """Let FastAPI answer; the status it sent."""
        status = 500

        async def watched(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        await self.api(scope, receive, watched)
        return status

    async def _proxied(
        self, scope: Scope, receive: Receive, send: Send, required: str, began: float
    ) -> int:
        """Relay a request to its engine; the status sent (499: the client left first)."""
        try:
            return await self._proxy(scope, receive, send, required, began)
        except OffGridError as exc:
            await _send_whole(send, exc.status, error_json(exc), exc.headers())
            return exc.status
        except ConnectionResetError:
            return 499  # the client left before we answered
        except Exception as exc:
            log.exception("unexpected error on %s", scope["path"])
            message = f"Internal error ({type(exc).__name__}); the server log has the details."
            await _send_whole(send, 500, error_json(OffGridError(message)))
            return 500

    def _count(self, model: str, text: bytes, ttft: float | None) -> None:
        if self._metrics is not None:
            self._metrics.completion(model, completion_facts(text), ttft)

    async def _proxy(
        self, scope: Scope, receive: Receive, send: Send, required: str, began: float
    ) -> int:
        declared = 0
        for name, value in scope["headers"]:
            if name == b"content-length":
                declared = int(value or 0)
        body = await _read_body(receive, self.state.settings.max_request_bytes, declared)
        req = parse_request(body, required)
        model = self.state.aliases.get(req.model, req.model)
        relay: Relay = self.state.relay
        path, stream = scope["path"], req.stream
        target = client_transport(send) if stream else None
        if target is None:
            upstream = await relay.open(path, body, model, stream, keep_alive=req.keep_alive)
            if upstream.response.status != 200 or not stream:
                status, data = await upstream.read_whole()
                await _send_whole(send, status, data)
                if status == 200:
                    self._count(model, data, None)
                return status
            return await self._stream(upstream, receive, send, began)
        engine_stream, lease = await relay.open_stream(path, body, model, keep_alive=req.keep_alive)
        try:
            return await self._splice(engine_stream, lease.model_id, target, receive, send, began)
        finally:
            engine_stream.close()
            lease.release()

    async def _splice(
        self,
        upstream: EngineStream,
        model_id: str,
        target: tuple[Any, Any],
        receive: Receive,
        send: Send,
        began: float,
    ) -> int:
        """Relay a streamed answer socket to socket (``splice``) until done or the client
        leaves; the status sent."""
        status, _headers = upstream.head.result()
        if status != 200 or not upstream.chunked:
            data = await upstream.read_whole()
            await _send_whole(send, status, data if status == 200 else reshape_error(status, data))
            return status
        headers = [*_SSE_HEADERS, (b"transfer-encoding", b"chunked")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        transport, flow = target
        tail: collections.deque[bytes] = collections.deque(maxlen=4)
        first: list[float] = []

        def sink(data: bytes) -> None:
            transport.write(data)
            tail.append(data)
            if not first:
                first.append(time.perf_counter() - began)
            if flow.write_paused and upstream.transport is not None:
                upstream.transport.pause_reading()  # a slow client slows the engine's stream
                asyncio.get_running_loop().create_task(resume_when_drained())

        async def resume_when_drained() -> None:
            await flow.drain()
            if upstream.transport is not None and not upstream.transport.is_closing():
                upstream.transport.resume_reading()

        watcher = asyncio.create_task(_close_on_disconnect(receive, upstream.close))
        try:
            upstream.splice_to(sink)
            try:
                await upstream.done
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            except ConnectionError as exc:
                if upstream.closed_by_us:  # the client left: with the whole answer, or before?
                    if not (tail and b"[DONE]" in tail[-1]):
                        return 499
                elif not upstream.at_boundary:
                    transport.close()  # mid-chunk: only a broken response is honest
                    return 502
                else:
                    event = error_event(engine_failed(model_id, exc))
                    await send({"type": "http.response.body", "body": event, "more_body": False})
            self._count(model_id, b"".join(tail), first[0] if first else None)
            return 200
        finally:
            watcher.cancel()

    async def _stream(self, upstream: Upstream, receive: Receive, send: Send, began: float) -> int:
        """Relay a streamed answer through ASGI ``send`` (servers other than uvicorn's)."""
        watcher = asyncio.create_task(_close_on_disconnect(receive, upstream.close))
        tail: collections.deque[bytes] = collections.deque(maxlen=4)
        ttft: float | None = None
        try:
            await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
            try:
                async for chunk in upstream.response.content.iter_any():
                    if ttft is None:
                        ttft = time.perf_counter() - began
                    tail.append(chunk)
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            except Exception as exc:  # the engine died or the connection broke mid-stream
                if not upstream.closed_by_us:
                    event = error_event(engine_failed(upstream.lease.model_id, exc))
                    await send({"type": "http.response.body", "body": event, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            self._count(upstream.lease.model_id, b"".join(tail), ttft)
            return 200
        finally:
            watcher.cancel()
            upstream.close()


async def _close_on_disconnect(receive: Receive, close: Callable[[], None]) -> None:
    """Wait for the client to go away, then ``close`` the upstream (which stops the engine)."""
    while (await receive())["type"] != "http.disconnect":
        pass
    close()
