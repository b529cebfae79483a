"""A model split across boxes with llama.cpp's RPC backend, never exposed bare.

On a worker (``offgrid rpc-worker``, or ``OFFGRID_RPC_WORKER=1`` with P2P on) the server
runs llama.cpp's ``ggml-rpc-server`` as its child, bound to 127.0.0.1: its protocol has no
authentication and has had remote-code-execution advisories, so only the peer listener
reaches it, for paired peers (``/p2p/rpc``: a websocket carrying the bytes both ways).

On the node that runs the model, each chosen worker gets a ``Tunnel``: a port on
127.0.0.1 whose connections are carried over that websocket, inside the mutual TLS. The
engine starts with ``--rpc`` to those ports and ``--n-gpu-layers``/``--tensor-split``
from a plan (``plan_split``): the layers shared between this box and the workers in
proportion to their free memory, as each last said in its hello.

A worker lost mid-request makes llama-server abort (it cannot go on without its layers):
the client gets an error event, the tunnel marks the worker as lost for ``LOST_S``, and
the next start of the model is planned without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import aiohttp
    from aiohttp import web

__all__ = ["LOST_S", "RpcWorker", "Split", "Tunnel", "plan_split"]

LOST_S = 120.0  # a worker whose tunnel broke is left out of plans this long
_READ = 256 * 1024
log = logging.getLogger("offgrid.p2p")


class RpcWorker:
    """This node's ``ggml-rpc-server``, on 127.0.0.1 only; ``close()`` stops it."""

    def __init__(self, binary: Path, threads: int, log_dir: Path) -> None:
        self.binary, self.threads, self.log_dir = binary, threads, log_dir
        self.port = 0
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        """Start it (it dies with this process, as engines do); a worker that does not
        come up is stopped and reported, and the node goes on without it."""
        from offgrid.engine.process import die_with_parent, free_port

        self.port = free_port()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with (self.log_dir / "rpc-server.log").open("ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                str(self.binary),
                *("-H", "127.0.0.1", "-p", str(self.port), "-t", str(self.threads)),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                preexec_fn=die_with_parent,
            )
        deadline = time.monotonic() + 30
        while not await _accepts(self.port):
            if self.proc.returncode is not None or time.monotonic() > deadline:
                log.warning("the RPC worker did not start: see %s", self.log_dir)
                await self.close()
                return
            await asyncio.sleep(0.05)
        log.info(
            "RPC worker pid %d on 127.0.0.1:%d (peers reach it by the peer listener)",
            self.proc.pid,
            self.port,
        )

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def close(self) -> None:
        if self.alive:
            assert self.proc is not None
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 5)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


async def _accepts(port: int) -> bool:
    try:
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    return True


async def pipe_ws_to_tcp(ws: web.WebSocketResponse, port: int) -> None:
    """The worker's side of one tunnelled connection: websocket ⇄ 127.0.0.1:port."""

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    _nodelay(writer)
    await _splice(ws, reader, writer)
    writer.close()
    await ws.close()


async def _splice(
    ws: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
) -> bool:
    """Pipe a websocket and a TCP connection both ways until either side ends; True when
    the TCP side ended it."""
    from aiohttp import WSMsgType

    tcp_ended = False

    async def outbound() -> None:
        nonlocal tcp_ended
        while data := await reader.read(_READ):
            await ws.send_bytes(data)
        tcp_ended = True

    async def inbound() -> None:
        async for msg in ws:
            if msg.type != WSMsgType.BINARY:
                break
            writer.write(msg.data)
            await writer.drain()

    await _both(outbound(), inbound())
    return tcp_ended


async def _both(*jobs: Coroutine[Any, Any, None]) -> None:
    """Run the two directions until either ends (a closed side ends the connection)."""
    tasks = [asyncio.ensure_future(j) for j in jobs]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _ours(writer: asyncio.StreamWriter) -> bool:
    """Whether the other end of a loopback connection belongs to this process's user (its
    socket's uid in /proc/net/tcp): the engines run as this user, nobody else may use a
    tunnel. True where that cannot be read (not Linux)."""
    peer, local = writer.get_extra_info("peername"), writer.get_extra_info("sockname")
    if not peer or not local:
        return False
    theirs = f"0100007F:{peer[1]:04X} 0100007F:{local[1]:04X}"
    try:
        with open("/proc/net/tcp", encoding="ascii") as table:
            for line in table:
                fields = line.split()
                if " ".join(fields[1:3]) == theirs:
                    return int(fields[7]) == os.getuid()
    except OSError:
        return True
    return False


def _nodelay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Tunnel:
    """127.0.0.1:``port`` here → a peer's RPC worker, over its peer listener."""

    def __init__(
        self, name: str, connect: Callable[[], Awaitable[aiohttp.ClientWebSocketResponse]]
    ) -> None:
        self.name = name
        self._connect = connect  # opens the websocket to the peer's /p2p/rpc
        self.port = 0
        self.lost_at = 0.0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    @property
    def lost(self) -> bool:
        return time.monotonic() - self.lost_at < LOST_S if self.lost_at else False

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        from aiohttp import ClientError

        _nodelay(writer)
        if not _ours(writer):  # another user of this box: the tunnel speaks for this node
            log.warning("refused a connection to the RPC tunnel of %s from another user", self.name)
            writer.close()
            return
        try:
            ws = await self._connect()
        except (ClientError, OSError) as exc:
            log.warning("RPC worker %s cannot be reached: %s", self.name, exc)
            self.lost_at = time.monotonic()
            writer.close()
            return
        if not await _splice(ws, reader, writer):  # the worker's side ended it: lost
            log.warning(
                "the RPC worker %s was lost: models split onto it start without it", self.name
            )
            self.lost_at = time.monotonic()
        await ws.close()
        writer.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()


@dataclass(frozen=True)
class Split:
    """How one model is spread: the workers' ports and each one's share of the layers."""

    endpoints: tuple[str, ...]
    layers: int  # on the workers, all together
    shares: tuple[float, ...]  # of those layers, per worker

    def args(self) -> list[str]:
        split = ",".join(f"{s:.3f}" for s in self.shares)
        return [
            *("--rpc", ",".join(self.endpoints)),
            *("--n-gpu-layers", str(self.layers), "--fit", "off"),
            *("--tensor-split", split),
            *("--log-verbosity", "4"),  # the engine's log then says where each layer went
        ]


def plan_split(layers: int, local_free: int, workers: dict[str, int]) -> Split | None:
    """The share of ``layers`` each worker (endpoint → free bytes) takes, in proportion to
    its free memory against this box's; None without a worker or without room on them."""
    room = {e: free for e, free in workers.items() if free > 0}
    total = local_free + sum(room.values())
    if not room or total <= 0:
        return None
    on_workers = math.ceil(layers * sum(room.values()) / total)  # this box: no more than its share
    if on_workers <= 0:
        return None
    shares = tuple(free / sum(room.values()) for free in room.values())
    return Split(tuple(room), min(on_workers, layers), shares)
