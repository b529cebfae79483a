"""ASGI plumbing the relay's handlers share: the types, one call, a whole answer, and
noticing that the client left."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from offgrid.api.dialects import Route
from offgrid.api.relay.path import Answer, Stream

if TYPE_CHECKING:
    from offgrid.runtime import Runtime

__all__ = ["JSON_HEADERS", "Call", "Receive", "Scope", "Send", "close_on_disconnect", "send_whole"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

JSON_HEADERS = [(b"content-type", b"application/json")]


async def send_whole(
    send: Send, status: int, body: bytes, headers: dict[str, str] | None = None
) -> None:
    """Answer with one JSON body."""
    raw = JSON_HEADERS + [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


async def close_on_disconnect(receive: Receive, close: Callable[[], None]) -> None:
    """Wait for the client to go away, then ``close`` the upstream (which stops the engine)."""
    while (await receive())["type"] != "http.disconnect":
        pass
    close()


@dataclass
class Call:
    """One request: the runtime, its ASGI triple, its route (the field it needs, its
    dialect), when it came, and for its log line the model and, once over, the answer."""

    runtime: Runtime | None
    scope: Scope
    receive: Receive
    send: Send
    route: Route
    began: float
    model: str | None = None
    answer: Answer | Stream | None = None
