"""A proxied request's life once parsed: lease a slot → forward → answer → release → count.

Two contracts, for every dialect: ``Relay.whole()`` reads the engine's whole answer,
``Relay.stream()`` opens a ``Stream`` whose pieces come as the engine makes them. Either
way the lease on the engine is released, and a completion's tokens, time to first token
and speed are counted, once the answer is over; an engine's own error comes back in the
shape of the client's dialect, and an engine that fails raises ``EngineError``.
"""

from __future__ import annotations

import collections
import json
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import aiohttp

from offgrid.api.dialects import Dialect
from offgrid.api.errors import dialect_error
from offgrid.api.metrics import Metrics, completion_facts
from offgrid.api.relay.engine_client import EngineClient, engine_failed
from offgrid.api.relay.engine_stream import EngineStream
from offgrid.scheduler import Scheduler

__all__ = ["Answer", "Relay", "Stream", "engine_error"]


@dataclass(frozen=True)
class Answer:
    """An engine's whole answer: its status and body (an error reshaped as OpenAI's), and
    the completion's tokens and speed (``metrics.completion_facts``)."""

    status: int
    body: bytes
    model_id: str
    facts: Mapping[str, float] = field(default_factory=dict)


class Stream:
    """A streamed answer in progress, on its own connection to the engine."""

    def __init__(
        self, upstream: EngineStream, model_id: str, began: float, dialect: Dialect
    ) -> None:
        self.upstream = upstream
        self.dialect = dialect
        self.model_id = model_id
        self.began = began
        self.tail: collections.deque[bytes] = collections.deque(maxlen=4)  # by reference
        self.ttft: float | None = None
        self.facts: Mapping[str, float] = {}  # once the stream is over and was whole

    @property
    def status(self) -> int:
        return self.upstream.head.result()[0]

    @property
    def ok(self) -> bool:
        """Whether the engine is streaming (else ``error()`` has its whole answer)."""
        return self.status == 200 and self.upstream.chunked

    async def error(self) -> tuple[int, bytes]:
        """The status and whole answer of a stream that did not start (an error in its
        dialect's shape)."""
        data = await self.upstream.read_whole()
        return (200, data) if self.status == 200 else engine_error(self.status, data, self.dialect)

    def seen(self, data: bytes) -> None:
        """Note a piece on its way to the client: the tail holds the usage, the first one
        is the time to first token."""
        self.tail.append(data)
        if self.ttft is None:
            self.ttft = time.perf_counter() - self.began

    async def pieces(self) -> AsyncIterator[bytes]:
        """The chunks' data as the engine makes it; EngineError if the engine fails midway
        (end the client's stream with ``error_event``). Ends quietly after ``close()``."""
        try:
            async for piece in self.upstream.pieces():
                self.seen(piece)
                yield piece
        except ConnectionError as exc:
            if not self.upstream.closed_by_us:
                raise engine_failed(self.model_id, exc) from exc

    def close(self) -> None:
        """Drop the connection: the engine cancels the generation (the client left)."""
        self.upstream.close()

    @property
    def answered(self) -> bool:
        """Whether the engine's last event came, so the tokens in the tail are the total."""
        done = self.upstream.done
        if done.done() and done.exception() is None:
            return True
        return bool(self.tail) and b"[DONE]" in self.tail[-1]


class Relay:
    """Forwards requests to the engines the scheduler leases; one per server."""

    def __init__(self, scheduler: Scheduler, metrics: Metrics) -> None:
        self.client = EngineClient(scheduler)
        self.metrics = metrics

    async def start(self) -> None:
        await self.client.start()

    async def close(self) -> None:
        await self.client.close()

    async def whole(
        self,
        path: str,
        body: bytes,
        model_id: str,
        *,
        keep_alive: float | None = None,
        dialect: Dialect = "openai",
        content_type: str = "application/json",
    ) -> Answer:
        """Send ``body`` to ``path`` on the engine of ``model_id``; its whole answer (an
        error in ``dialect``'s shape)."""
        response, lease = await self.client.post(
            path, body, model_id, keep_alive=keep_alive, content_type=content_type
        )
        self.metrics.waited(lease.model_id, lease.waited)
        try:
            data = await response.read()
        except aiohttp.ClientError as exc:
            raise engine_failed(lease.model_id, exc) from exc
        finally:
            response.release()
            lease.release()
        if response.status != 200:
            status, error = engine_error(response.status, data, dialect)
            return Answer(status, error, lease.model_id)
        facts = completion_facts(data)
        self.metrics.completion(lease.model_id, facts, None)
        return Answer(200, data, lease.model_id, facts)

    @asynccontextmanager
    async def stream(
        self,
        path: str,
        body: bytes,
        model_id: str,
        *,
        keep_alive: float | None = None,
        began: float | None = None,
        dialect: Dialect = "openai",
    ) -> AsyncIterator[Stream]:
        """A streamed request to the engine of ``model_id``, held until the block ends.

        ``began`` (``time.perf_counter()``) is when the client's request arrived, for the
        time to first token.
        """
        upstream, lease = await self.client.open_stream(path, body, model_id, keep_alive=keep_alive)
        self.metrics.waited(lease.model_id, lease.waited)
        began = time.perf_counter() if began is None else began
        stream = Stream(upstream, lease.model_id, began, dialect)
        try:
            yield stream
        finally:
            upstream.close()
            lease.release()
            if stream.ok and stream.answered:
                stream.facts = completion_facts(b"".join(stream.tail))
                self.metrics.completion(stream.model_id, stream.facts, stream.ttft)


# How llama-server's errors about a malformed request begin (tools/server/server-common.cpp,
# common/chat.cpp, its JSON library; found by tests/test_fuzz.py). It answers 500 for every
# exception but ``invalid_argument``, and these are raised by nothing but the request.
_REQUEST_ERRORS = (
    # its JSON library reading the request: malformed JSON, a number where a string must
    # be, tools that is not an array, a missing key (not type_error.316: invalid UTF-8 in
    # what the engine itself writes)
    "[json.exception.parse_error",
    "[json.exception.type_error.30",
    "[json.exception.out_of_range.40",
    "Failed to parse messages",
    "Failed to parse tools",
    '"prompt" ',  # embedding or completion input of the wrong shape, or empty
    "'messages' is required",
    "Unsupported param",
    "Only no echo",
    "Invalid base64",
    "Invalid token",
    "vector::_M_range_check",  # a token id past the vocabulary (/detokenize)
    "Cannot use both json_schema and grammar",
    "Cannot specify grammar with tools",
    "Cannot specify both content and content_parts",
    "Multimodal data provided, but model does not support",
    "image input is not supported",
    "audio input is not supported",
    "video input is not supported",
    "Failed to load image or audio file",
    "for mtmd, input prompt must be a string",
)


def engine_error(status: int, data: bytes, dialect: Dialect = "openai") -> tuple[int, bytes]:
    """The engine's own error, its status and body in ``dialect``'s shape (OpenAI's
    ``{"error": {message, type, param, code}}`` by default). The engine's 500s about a
    malformed request (``_REQUEST_ERRORS``) are the client's mistake: a 400."""
    message, type_ = data.decode("utf-8", errors="replace")[:2000], "invalid_request_error"
    try:
        err = json.loads(data).get("error", {})
        message = str(err.get("message", message))
        type_ = str(err.get("type", type_))
    except (ValueError, AttributeError):
        pass
    if status == 500 and message.startswith(_REQUEST_ERRORS):
        status, type_ = 400, "invalid_request_error"
    if status == 501:  # "not supported" by this model (audio input, embeddings): the
        status = 400  # client asked the wrong model, as OpenAI answers it
    if status >= 500:
        type_ = "server_error"
    return status, dialect_error(dialect, status, message, type_)
