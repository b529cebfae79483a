"""A streamed answer read at the socket level: the engine's chunks go out as they came.

llama-server streams server-sent events as HTTP/1.1 chunks, and uvicorn sends ours as HTTP/1.1
chunks too, so the bytes need no re-framing: an ``asyncio.Protocol`` on the upstream socket
writes each chunk straight to the client's transport from ``data_received``. Per token
that is one callback and one write, with no task switch, no generator and no ASGI message;
the relay's CPU per token fell by about half against aiohttp + ASGI ``send`` (see
docs/decisions.md). Only chunk boundaries are tracked, so that the engine's final
zero-length chunk is held back and uvicorn ends the response itself.

This needs the client's transport, which ASGI does not expose; ``client_transport(send)``
finds it on uvicorn's httptools cycle and returns None anywhere else. There, and for
adapters that reshape what the engine says, ``pieces()`` yields the chunks' data without
their framing instead. The response head of a splice must say ``transfer-encoding:
chunked`` so that uvicorn frames the rest the same way.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from offgrid.engine.process import Engine

__all__ = ["EngineStream", "client_transport", "connect", "send_request"]


def client_transport(send: Callable[..., Awaitable[None]]) -> tuple[Any, Any] | None:
    """(transport, flow control) of the client connection behind uvicorn's httptools ``send``."""
    cycle: Any = getattr(send, "__self__", None)
    if type(cycle).__module__ != "uvicorn.protocols.http.httptools_impl":
        return None
    if not (hasattr(cycle, "transport") and hasattr(cycle, "flow")):
        return None
    return cycle.transport, cycle.flow


class EngineStream(asyncio.Protocol):
    """One streamed request on its own connection (llama-server closes it afterwards)."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.head: asyncio.Future[tuple[int, dict[str, str]]] = loop.create_future()
        self.done: asyncio.Future[None] = loop.create_future()
        self.closed_by_us = False
        self._head_buf = b""
        self._body: list[bytes] = []  # bytes that came before a sink was attached
        self._sink: Callable[[bytes], None] | None = None
        self._need = 0  # bytes left of the current chunk's data and its CRLF
        self._held = b""  # an incomplete chunk-size line, kept until it is whole
        self._chunked = False
        self._framed = True  # the sink takes chunks with their framing (a splice)
        self.requested = False
        self.lost = False
        self.connected_at = loop.time()

    # -- asyncio.Protocol -------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        if self._sink is not None:
            self._feed(data)
        elif self.head.done():
            self._body.append(data)
        else:
            self._head_buf += data
            end = self._head_buf.find(b"\r\n\r\n")
            if end >= 0:
                self._parse_head(self._head_buf[:end])
                if rest := self._head_buf[end + 4 :]:
                    self._body.append(rest)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if not self.requested:
            return  # an unused spare: nobody waits on it
        error = ConnectionResetError(str(exc) if exc else "the engine closed the connection")
        if not self.head.done():
            self.head.set_exception(error)
        if not self.done.done():
            if self._sink is None:  # a whole (non-chunked) body ends with the connection
                self.done.set_result(None)
            else:
                self.done.set_exception(error)

    # -- response ---------------------------------------------------------------------
    def _parse_head(self, raw: bytes) -> None:
        lines = raw.decode("latin-1").split("\r\n")
        try:
            status = int(lines[0].split(" ", 2)[1])
        except (IndexError, ValueError):
            self.head.set_exception(ConnectionResetError(f"bad status line {lines[0]!r}"))
            return
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        self._chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        self.head.set_result((status, headers))

    @property
    def chunked(self) -> bool:
        return self._chunked

    @property
    def at_boundary(self) -> bool:
        """True between chunks, where an extra chunk can be written without breaking framing."""
        return self._need == 0 and not self._held

    def splice_to(self, sink: Callable[[bytes], None], *, framed: bool = True) -> None:
        """Send every chunk from now on to ``sink`` (with its HTTP framing, or only its data);
        ``done`` resolves at the last one."""
        self._sink, self._framed = sink, framed
        for data in self._body:
            self._feed(data)
        self._body.clear()

    async def pieces(self, high_water: int = 64) -> AsyncIterator[bytes]:
        """The chunks' data as it arrives; raises ConnectionError if the stream breaks.

        Reading pauses while ``high_water`` pieces wait for the consumer, so a slow client
        slows the engine instead of filling memory.
        """
        queue: asyncio.Queue[bytes] = asyncio.Queue()

        def sink(data: bytes) -> None:
            queue.put_nowait(data)
            if queue.qsize() >= high_water and self.transport is not None:
                self.transport.pause_reading()

        self.splice_to(sink, framed=False)
        while True:
            if queue.empty():
                if self.transport is not None and not self.transport.is_closing():
                    self.transport.resume_reading()
                getter = asyncio.ensure_future(queue.get())
                await asyncio.wait((getter, self.done), return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    getter.cancel()
                    self.done.result()  # raises if the stream broke
                    return
                yield getter.result()
            else:
                yield queue.get_nowait()

    async def read_whole(self) -> bytes:
        """The body of a non-chunked response (an error, typically)."""
        await asyncio.shield(self.done)
        return b"".join(self._body)

    def _feed(self, data: bytes) -> None:
        buf = self._held + data if self._held else data
        self._held = b""
        i, end, finished = 0, len(buf), False
        payload: list[bytes] = []  # the data of the chunks, when the sink wants no framing
        while i < end:
            if self._need:
                take = min(self._need, end - i)
                if not self._framed and (data_left := self._need - 2) > 0:
                    payload.append(buf[i : i + min(take, data_left)])
                i += take
                self._need -= take
                continue
            eol = buf.find(b"\n", i)
            if eol < 0:
                self._held, buf = buf[i:], buf[:i]
                break
            size = int(buf[i:eol].split(b";", 1)[0], 16)
            if size == 0:
                buf, finished = buf[:i], True
                break
            self._need = size + 2
            i = eol + 1
        out = buf if self._framed else b"".join(payload)
        if out:
            assert self._sink is not None
            self._sink(out)
        if finished and not self.done.done():
            self.done.set_result(None)
            self.close()

    def fresh(self, max_age: float) -> bool:
        """Unused, still connected and young enough to outlive the engine's idle timeout."""
        age = asyncio.get_running_loop().time() - self.connected_at
        return not (self.requested or self.lost) and age < max_age

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.closed_by_us = not self.done.done()
            if self.closed_by_us:  # its breaking is ours: nobody need hear of it
                self.done.add_done_callback(lambda f: f.cancelled() or f.exception())
            self.transport.close()


async def connect(host: str, port: int) -> EngineStream:
    """A new connection to an engine, ready for one request."""
    loop = asyncio.get_running_loop()
    transport, stream = await loop.create_connection(EngineStream, host, port)
    stream.transport = transport  # connection_made may come later (uvloop)
    return stream


async def send_request(stream: EngineStream, engine: Engine, path: str, body: bytes) -> None:
    """Send a streamed POST to ``engine`` on ``stream`` and wait for the response head."""
    assert stream.transport is not None
    stream.requested = True
    stream.transport.write(
        (
            f"POST {path} HTTP/1.1\r\nHost: {engine.host}:{engine.port}\r\n"
            f"Authorization: {engine.auth_header}\r\n"
            "Content-Type: application/json\r\nAccept: text/event-stream\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode()
        + body
    )
    try:
        await stream.head
    except BaseException:
        stream.close()
        raise
