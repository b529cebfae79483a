"""A request answered by a peer (``p2p.federation``): its status, headers and body relayed
to the client as they come, a stream chunk by chunk. A client that leaves closes the
connection to the peer, which frees the peer's engine slot as a local request would."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING

import aiohttp

from offgrid.api.errors import error_event
from offgrid.api.relay.asgi import Call, close_on_disconnect
from offgrid.errors import UnreachableError
from offgrid.p2p.federation import HOP_HEADER

if TYPE_CHECKING:
    from offgrid.runtime import Runtime

__all__ = ["federate", "federates"]

_KEPT = frozenset({"content-type", "retry-after", "cache-control", "x-accel-buffering"})


def federates(runtime: Runtime, call: Call, model: str, *, installed: bool = False) -> bool:
    """Whether this request goes to a peer: federation on, the model neither loaded nor
    installed here (or, ``installed``, here but with no room for it), and the request not
    sent by a peer already."""
    if runtime.p2p is None or not runtime.settings.federation:
        return False
    if model in runtime.scheduler.loaded() or any(
        name == HOP_HEADER.encode() for name, _ in call.scope["headers"]
    ):
        return False
    federation = runtime.p2p.federation
    if federation.loads and not federation.choose(model):
        return False  # no peer has it: no need to look through this node's folders
    return installed or model not in runtime.registry.ids()


def _named(body: bytes, model: str) -> bytes:
    """The body with the model as the peer knows it: an alias here means nothing there."""
    data = json.loads(body)
    if not isinstance(data, dict) or data.get("model") == model:
        return body
    return json.dumps({**data, "model": model}).encode()


async def federate(call: Call, runtime: Runtime, body: bytes, model: str) -> int | None:
    """Relay the request to a peer that has ``model``; the status sent, or None when no
    peer has it (the request is then answered here, as any unknown model is)."""
    assert runtime.p2p is not None
    path, send = call.scope["path"], call.send
    given = dict(call.scope["headers"]).get(b"content-type", b"application/json")
    headers = {"content-type": given.decode("latin-1")}
    if given.startswith(b"application/json"):
        body = _named(body, model)
    async with runtime.p2p.federation.request(model, path, body, headers) as answered:
        if answered is None:
            return None
        peer, resp = answered
        kept = [
            (k.lower().encode(), v.encode()) for k, v in resp.headers.items() if k.lower() in _KEPT
        ]
        kept.append((b"x-offgrid-peer", peer.name.encode()))
        await send({"type": "http.response.start", "status": resp.status, "headers": kept})
        watcher = asyncio.create_task(close_on_disconnect(call.receive, resp.close))
        status = resp.status
        try:
            async for chunk in resp.content.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except (aiohttp.ClientError, ConnectionError) as exc:
            if watcher.done():
                return 499  # the client left; closing the peer's answer stopped its engine
            lost = UnreachableError(f"Peer {peer.name} stopped answering mid-way ({exc}).")
            sse = resp.headers.get("content-type", "").startswith("text/event-stream")
            tail = error_event(lost, call.route.dialect) if sse else b""
            await send({"type": "http.response.body", "body": tail, "more_body": False})
            return 502
        finally:
            watcher.cancel()
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return status
