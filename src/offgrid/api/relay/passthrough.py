"""OpenAI's proxied routes as plain ASGI, in front of FastAPI: the hot path.

Every streamed token passes through here, and on a small box each microsecond the relay
spends is taken from the engine. Behind FastAPI each chunk crossed a generator, Starlette's
StreamingResponse and two ``send`` wrappers (error and exception middleware); here a chunk
read from the engine goes straight to the client's socket (``engine_stream``; under other
servers than uvicorn's httptools, to ASGI ``send``). Everything else, and the OpenAPI
schema, stays with FastAPI.

A client that disconnects is noticed by a watcher on ``receive()``, which closes the
upstream connection; closing it makes llama-server cancel the generation. Every request,
proxied or not, passes the API-key check here first (``auth.guard``) and is counted here
for ``/metrics`` (route, status, duration).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from offgrid.api.dialects import ROUTES, Dialect, Route, dialect_of
from offgrid.api.errors import error_event, error_json, unexpected
from offgrid.api.ollama.inference import serve_ollama
from offgrid.api.relay.asgi import Call, Receive, Scope, Send, close_on_disconnect, send_whole
from offgrid.api.relay.engine_client import engine_failed
from offgrid.api.relay.engine_stream import client_transport
from offgrid.api.relay.federated import federate, federates
from offgrid.api.relay.path import Stream
from offgrid.api.relay.request import ProxyRequest, check_header_size, parse_request, read_body
from offgrid.errors import InsufficientMemoryError, OffGridError
from offgrid.logs import request_line

if TYPE_CHECKING:
    from offgrid.runtime import Runtime

__all__ = ["ProxyApp"]

Message = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

log = logging.getLogger("offgrid.api")

_NOT_PROXIED = Route("")  # FastAPI's routes: built once, not per request

# A client that stops reading a stream for this long is dropped, and its engine slot freed
# (the engine stops when its connection closes): it would hold the slot for ever otherwise
STALLED_S = 30.0

_SSE_HEADERS = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


class ProxyApp:
    """ASGI entry point: proxied routes handled here, everything else by ``api``."""

    def __init__(self, api: ASGIApp, state: Any) -> None:
        self.api = api
        self.state = state  # FastAPI's app.state: its lifespan puts the runtime there

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.api(scope, receive, send)
            return
        began = time.perf_counter()
        runtime: Runtime | None = getattr(self.state, "runtime", None)
        route = ROUTES.get(scope["path"])
        call = Call(runtime, scope, receive, send, route or _NOT_PROXIED, began)
        try:
            check_header_size(scope["headers"])
            if runtime is not None:
                runtime.guard.check(scope["method"], scope["path"], scope["headers"])
        except Exception as exc:  # a bad keys file too: refused, never waved through
            refused = exc if isinstance(exc, OffGridError) else unexpected(exc)
            body = error_json(refused, dialect_of(scope["path"]))
            await send_whole(send, refused.status, body, refused.headers())
            status, label = refused.status, "refused"
        else:
            if route is None or scope["method"] != "POST":
                status = await self._api(scope, receive, send)
                label = getattr(scope.get("route"), "path", "unmatched")  # a template
            else:
                status = await self._proxied(call)
                label = scope["path"]
        seconds = time.perf_counter() - began
        if runtime is not None:
            runtime.metrics.request(label, status, seconds)
        facts = call.answer.facts if call.answer is not None else None
        request_line(scope["method"], label, status, seconds, model=call.model, tokens=facts)

    async def _api(self, scope: Scope, receive: Receive, send: Send) -> int:
        """Let FastAPI answer; the status it sent (500 for a bug, which Starlette has
        answered and logged before it raises it again)."""
        status = 500

        async def watched(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        with contextlib.suppress(Exception):
            await self.api(scope, receive, watched)
        return status

    async def _proxied(self, call: Call) -> int:
        """Relay a request to its engine; the status sent (499: the client left first)."""
        try:
            return await self._proxy(call)
        except ConnectionResetError:
            return 499  # the client left before we answered
        except Exception as exc:
            error = exc if isinstance(exc, OffGridError) else unexpected(exc)
            body = error_json(error, call.route.dialect)
            await send_whole(call.send, error.status, body, error.headers())
            return error.status

    async def _proxy(self, call: Call) -> int:
        runtime = call.runtime
        assert runtime is not None  # set by the lifespan before any request
        body = await read_body(call.scope, call.receive, runtime.settings.max_request_bytes)
        route, path = call.route, call.scope["path"]
        req = parse_request(body, route.required, stream_default=route.dialect == "ollama")
        model = runtime.resolve(req.model)
        call.model = model
        if runtime.settings.log_prompts:  # OFFGRID_LOG_PROMPTS=1: asked for, never by default
            log.info("request body for %s: %s", path, body[:4000].decode(errors="replace"))
        if federates(runtime, call, model):
            status = await federate(call, runtime, body, model)
            if status is not None:
                return status
        try:
            return await self._here(call, runtime, body, req, model)
        except InsufficientMemoryError:  # raised before any answer began
            if federates(runtime, call, model, installed=True):
                status = await federate(call, runtime, body, model)
                if status is not None:  # a peer that has it, and room
                    return status
            raise

    async def _here(
        self, call: Call, runtime: Runtime, body: bytes, req: ProxyRequest, model: str
    ) -> int:
        """Answer with this node's engine for ``model``."""
        route, path, send, receive = call.route, call.scope["path"], call.send, call.receive
        if route.engine_path is not None:  # a translated dialect (Ollama's)
            return await serve_ollama(call, runtime, body, req)
        dialect = route.dialect
        if not req.stream:
            answer = await runtime.relay.whole(
                path, body, model, keep_alive=req.keep_alive, dialect=dialect
            )
            call.answer = answer
            await send_whole(send, answer.status, answer.body)
            return answer.status
        async with runtime.relay.stream(
            path, body, model, keep_alive=req.keep_alive, began=call.began, dialect=dialect
        ) as stream:
            call.answer = stream
            if not stream.ok:
                status, error = await stream.error()
                await send_whole(send, status, error)
                return status
            watcher = asyncio.create_task(close_on_disconnect(receive, stream.close))
            try:
                target = client_transport(send)
                if target is None or dialect == "anthropic":  # its pieces are looked at
                    return await _send_pieces(stream, send, dialect)
                return await _splice(stream, target, send, dialect)
            finally:
                watcher.cancel()


async def _splice(stream: Stream, target: tuple[Any, Any], send: Send, dialect: Dialect) -> int:
    """Relay a streamed answer socket to socket until done or the client leaves; the status
    sent (499: the client left before the answer was whole)."""
    upstream = stream.upstream
    headers = [*_SSE_HEADERS, (b"transfer-encoding", b"chunked")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    transport, flow = target

    def sink(data: bytes) -> None:
        transport.write(data)
        stream.seen(data)
        if flow.write_paused and upstream.transport is not None:
            upstream.transport.pause_reading()  # a slow client slows the engine's stream
            asyncio.get_running_loop().create_task(resume_when_drained())

    async def resume_when_drained() -> None:
        try:
            async with asyncio.timeout(STALLED_S):
                await flow.drain()
        except TimeoutError:  # the client stopped reading: drop it, free the slot
            transport.abort()
            stream.close()
            return
        if upstream.transport is not None and not upstream.transport.is_closing():
            upstream.transport.resume_reading()

    upstream.splice_to(sink)
    try:
        await upstream.done
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    except ConnectionError as exc:
        if upstream.closed_by_us:  # the client left: with the whole answer, or before?
            return 200 if stream.answered else 499
        if not upstream.at_boundary:
            transport.close()  # mid-chunk: only a broken response is honest
            return 502
        event = error_event(engine_failed(stream.model_id, exc), dialect)
        await send({"type": "http.response.body", "body": event, "more_body": False})
    return 200


async def _send_pieces(stream: Stream, send: Send, dialect: Dialect) -> int:
    """Relay a streamed answer through ASGI ``send`` (servers other than uvicorn's httptools,
    and Anthropic's streams); 499 when the client stopped reading and was dropped."""

    async def deliver(body: bytes, more: bool = True) -> None:
        async with asyncio.timeout(STALLED_S):  # a client that stopped reading
            await send({"type": "http.response.body", "body": body, "more_body": more})

    await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
    pieces = stream.pieces()
    if dialect == "anthropic":
        pieces = message_started(pieces, stream.model_id)
    try:
        try:
            async for piece in pieces:
                await deliver(piece)
        except OffGridError as exc:  # the engine died or the connection broke mid-stream
            await deliver(error_event(exc, dialect))
        await deliver(b"", more=False)
    except TimeoutError:
        stream.close()  # the engine stops generating
        transport = getattr(getattr(send, "__self__", None), "transport", None)
        if transport is not None:  # a graceful close would wait for it to read
            transport.abort()
        return 499
    return 200


async def message_started(pieces: AsyncIterator[bytes], model_id: str) -> AsyncIterator[bytes]:
    """An Anthropic stream that begins with ``message_start``, as Anthropic's clients need.

    llama-server sends it with its first token only (``n_decoded == 1`` in
    ``server-task.cpp``): when that token is an incomplete UTF-8 sequence (half an emoji)
    nothing is sent for it and the stream begins at ``content_block_start``, which the
    ``anthropic`` SDK cannot read (1 stream in about 50 here). Then one is made up.
    """
    head, decided = b"", False
    async for piece in pieces:
        if decided:
            yield piece
            continue
        head += piece  # a read may hold part of an event: decide on the first whole one
        if b"\n\n" not in head:
            continue
        decided = True
        if not head.startswith(b"event: message_start"):
            message: dict[str, object] = {
                "id": f"msg_{secrets.token_hex(12)}",
                "type": "message",
                "role": "assistant",
                "content": [],
                "model": model_id,
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": 0, "output_tokens": 0},
            }
            start = json.dumps({"type": "message_start", "message": message})
            yield b"event: message_start\ndata: " + start.encode() + b"\n\n"
        yield head
    if not decided and head:
        yield head
