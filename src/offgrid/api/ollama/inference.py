"""Ollama's inference routes on the relay: ``/api/chat``, ``/api/generate``, ``/api/embed``.

The request is translated (``convert``), sent on ``Relay.whole`` or ``Relay.stream`` like
any other, and the engine's answer comes back as Ollama's JSON or NDJSON lines, each line
sent as soon as the engine's event that makes it arrives. A chat or generate with nothing
to say loads the model (or, with ``keep_alive`` 0, unloads it): Ollama's documented idiom.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

from offgrid.api.errors import error_json
from offgrid.api.ollama.convert import (
    StreamShaper,
    created_at,
    embed_answer,
    engine_request,
    whole_answer,
)
from offgrid.api.relay.asgi import Call, close_on_disconnect, send_whole
from offgrid.api.relay.request import ProxyRequest
from offgrid.errors import OffGridError

if TYPE_CHECKING:
    from offgrid.runtime import Runtime

__all__ = ["serve_ollama"]

_NDJSON = [(b"content-type", b"application/x-ndjson"), (b"cache-control", b"no-cache")]


async def serve_ollama(call: Call, runtime: Runtime, body: bytes, req: ProxyRequest) -> int:
    """Answer an Ollama inference request; the status sent."""
    path, payload, model = call.scope["path"], req.payload, call.model or req.model
    send = call.send
    if path in ("/api/chat", "/api/generate") and not (
        payload.get("messages") or payload.get("prompt") or payload.get("images")
    ):
        return await _load_or_unload(call, runtime, model, req)
    engine_path, request = engine_request(path, payload, req.stream)
    data = json.dumps(request).encode()
    relay, name = runtime.relay, req.model
    if not req.stream or engine_path == "/v1/embeddings":
        answer = await relay.whole(
            engine_path, data, model, keep_alive=req.keep_alive, dialect="ollama"
        )
        call.answer = answer
        if answer.status != 200:
            await send_whole(send, answer.status, answer.body)
            return answer.status
        shape = embed_answer if engine_path == "/v1/embeddings" else whole_answer
        await send_whole(send, 200, json.dumps(shape(path, name, answer.body, call.began)).encode())
        return 200
    async with relay.stream(
        engine_path, data, model, keep_alive=req.keep_alive, began=call.began, dialect="ollama"
    ) as stream:
        call.answer = stream
        if not stream.ok:
            status, error = await stream.error()
            await send_whole(send, status, error)
            return status
        watcher = asyncio.create_task(close_on_disconnect(call.receive, stream.close))
        shaper = StreamShaper(path, name, call.began)
        await send({"type": "http.response.start", "status": 200, "headers": _NDJSON})
        try:
            async for piece in stream.pieces():
                for line in shaper.feed(piece):
                    await send({"type": "http.response.body", "body": line, "more_body": True})
        except OffGridError as exc:  # the engine died midway: Ollama's clients read this line
            line = error_json(exc, "ollama") + b"\n"
            await send({"type": "http.response.body", "body": line, "more_body": True})
        finally:
            watcher.cancel()
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    return 200


async def _load_or_unload(call: Call, runtime: Runtime, model: str, req: ProxyRequest) -> int:
    """An empty chat or generate: load the model, or unload it with ``keep_alive`` 0."""
    if req.keep_alive == 0:
        await runtime.scheduler.unload(model)
        reason = "unload"
    else:
        await runtime.scheduler.load(model, keep_alive=req.keep_alive)
        reason = "load"
    piece: dict[str, Any] = (
        {"message": {"role": "assistant", "content": ""}}
        if call.scope["path"] == "/api/chat"
        else {"response": ""}
    )
    answer = {"model": req.model, "created_at": created_at(), **piece, "done": True}
    await send_whole(call.send, 200, json.dumps(answer | {"done_reason": reason}).encode())
    return 200
