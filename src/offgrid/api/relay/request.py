"""What OffGrid reads of a proxied request: its body (within the size limit) and the few
fields it owns. The body itself goes to the engine unchanged (DESIGN.md decision 8)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from offgrid.api.dialects import ROUTES
from offgrid.errors import (
    BadRequestError,
    ConfigError,
    HeadersTooLargeError,
    PayloadTooLargeError,
    RequestTimeoutError,
)
from offgrid.units import parse_duration

__all__ = ["ROUTES", "ProxyRequest", "check_header_size", "parse_request", "read_body"]

# How long a body may take to arrive: this, and a second more for each KiB that came (a
# slow link sends far faster; a client sending a byte a second would hold its connection)
BODY_GRACE_S = 10.0

# What a client may send as headers, all together (nginx's default allows 32 KiB; httptools
# sets no limit of its own)
MAX_HEADER_BYTES = 64 * 1024


def check_header_size(headers: list[tuple[bytes, bytes]]) -> None:
    """HeadersTooLargeError (431) for headers past ``MAX_HEADER_BYTES`` in all."""
    if sum(len(name) + len(value) for name, value in headers) > MAX_HEADER_BYTES:
        raise HeadersTooLargeError(
            f"The request's headers are larger than {MAX_HEADER_BYTES // 1024} KiB in all."
        )


@dataclass(frozen=True)
class ProxyRequest:
    """The fields OffGrid owns of a request body."""

    model: str
    stream: bool
    keep_alive: float | None  # Ollama-style per-request override, in seconds
    payload: dict[str, Any]


def parse_request(body: bytes, required: str, *, stream_default: bool = False) -> ProxyRequest:
    """The fields OffGrid owns; BadRequestError for what it cannot accept. ``stream``
    is false unless said (OpenAI), or true unless said (Ollama: ``stream_default``)."""
    try:
        payload = json.loads(body, parse_constant=_not_json)
    except ValueError as exc:
        raise BadRequestError(f"The request body is not valid JSON: {exc}") from exc
    except RecursionError:
        raise BadRequestError("The request body is nested too deeply.") from None
    if not isinstance(payload, dict):
        raise BadRequestError("The request body must be a JSON object.")
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequestError("'model' is required: the id of an installed model.", param="model")
    if required and required not in payload:
        raise BadRequestError(f"'{required}' is required.", param=required)
    stream = payload.get("stream")
    stream = stream_default if stream is None else stream
    if not isinstance(stream, bool):
        raise BadRequestError("'stream' must be true or false.", param="stream")
    keep_alive = payload.get("keep_alive")
    try:
        seconds = None if keep_alive is None else parse_duration(keep_alive)
    except ConfigError as exc:
        raise BadRequestError(exc.message, param="keep_alive") from None
    return ProxyRequest(model, stream, seconds, payload)


def _not_json(name: str) -> None:
    """NaN and Infinity: Python's json takes them, JSON (and the engine) does not."""
    raise ValueError(f"{name} is not a JSON value")


async def read_body(
    scope: MutableMapping[str, Any],
    receive: Callable[[], Awaitable[MutableMapping[str, Any]]],
    limit: int,
) -> bytes:
    """The request's body; PayloadTooLargeError past ``limit`` bytes (said or sent),
    RequestTimeoutError when it comes slower than ``BODY_GRACE_S`` and 1 KiB/s allow,
    ConnectionResetError if the client leaves first."""
    for name, value in scope["headers"]:
        if name != b"content-length":
            continue
        if not value.isdigit():
            raise BadRequestError("Content-Length must be a number of bytes.")
        if int(value) > limit:
            raise PayloadTooLargeError(f"The request body is larger than {limit} bytes.")
    parts: list[bytes] = []
    size = 0
    loop = asyncio.get_running_loop()
    began = loop.time()
    while True:
        left = began + BODY_GRACE_S + size / 1024 - loop.time()
        try:
            async with asyncio.timeout(max(0.0, left)):  # cheaper than wait_for: no task
                message = await receive()
        except TimeoutError:
            raise RequestTimeoutError(
                f"The request body came too slowly ({size} bytes in "
                f"{loop.time() - began:.0f} s); send it at once."
            ) from None
        if message["type"] == "http.disconnect":
            raise ConnectionResetError("client went away")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(f"The request body is larger than {limit} bytes.")
        parts.append(chunk)
        if not message.get("more_body"):
            return b"".join(parts)
