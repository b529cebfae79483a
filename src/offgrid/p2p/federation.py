"""Federation (``OFFGRID_FEDERATION=1``): a request for a model this node does not have goes
to a paired peer that has it, over the peer listener's mutual TLS. (The peers' loads are
kept whenever P2P is on: split models plan with them too, ``p2p.rpc``.)

Every few seconds each paired peer is asked ``/p2p/hello``: its models, which are loaded,
how busy they are, and how long the answer took. A request is sent to a peer that has the
model loaded, else to one that has it installed, the least busy first, then the nearest.
The request goes as the client sent it to the peer's ``/p2p/relay/<route>``; the peer's
listener hands it to its own API (``listener``), so its scheduler queues it, its errors
(a 429 with Retry-After, a 404) come back as they were, and its stream as it is made.
A request that came from a peer is never sent on again: one hop, no loops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from offgrid.errors import UnreachableError
from offgrid.p2p.client import address_of, host_port
from offgrid.p2p.identity import Identity, client_context
from offgrid.p2p.peers import Peer, PeerStore

if TYPE_CHECKING:
    import aiohttp

__all__ = ["HOP_HEADER", "Federation", "PeerLoad"]

HOP_HEADER = "x-offgrid-federated"  # names the node a request came from: not sent on
EVERY_S = 5.0
HELLO_TIMEOUT_S = 3.0
log = logging.getLogger("offgrid.p2p")


@dataclass
class PeerLoad:
    """What a peer said of itself at its last hello."""

    models: list[str] = field(default_factory=list)
    loaded: list[str] = field(default_factory=list)
    busy: int = 0  # requests running and queued, over its loaded models
    latency_ms: float | None = None
    rpc_free: int | None = None  # memory its RPC worker offers (None: it runs none)
    at: float = 0.0
    error: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _load(hello: Any, latency_ms: float) -> PeerLoad:
    """A hello's load; TypeError, KeyError or ValueError for one of another shape."""
    if not isinstance(hello, dict):
        raise TypeError("the hello is not an object")
    loaded = [m for m in hello.get("loaded") or [] if isinstance(m, dict)]
    rpc = hello.get("rpc") or {}
    return PeerLoad(
        rpc_free=int(rpc["free_bytes"]) if isinstance(rpc, dict) and rpc.get("alive") else None,
        models=[str(m) for m in hello.get("models") or []],
        loaded=[str(m["id"]) for m in loaded],
        busy=sum(int(m.get("busy", 0)) for m in loaded),
        latency_ms=round(latency_ms, 2),
        at=time.time(),
    )


class Federation:
    """Peers' loads, kept fresh, and requests opened on the peer chosen for a model."""

    def __init__(self, identity: Identity, peers: PeerStore) -> None:
        self.identity, self.peers = identity, peers
        self.loads: dict[str, PeerLoad] = {}  # by fingerprint
        self._session: aiohttp.ClientSession | None = None
        self._contexts: dict[str, ssl.SSLContext] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        import aiohttp

        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5), auto_decompress=False
        )
        self._task = asyncio.create_task(self._poll())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._session is not None:
            await self._session.close()

    def _context(self, peer: Peer) -> ssl.SSLContext:
        if peer.fingerprint not in self._contexts:
            self._contexts[peer.fingerprint] = client_context(self.identity, peer.cert)
        return self._contexts[peer.fingerprint]

    def _url(self, peer: Peer, path: str, address: str | None = None) -> str:
        host, port = host_port(address or peer.address)
        return f"https://{address_of(host, port)}{path}"

    async def rpc_socket(self, peer: Peer) -> aiohttp.ClientWebSocketResponse:
        """A websocket to the peer's RPC worker (``p2p.rpc``), inside the mutual TLS."""
        assert self._session is not None
        return await self._session.ws_connect(
            self._url(peer, "/p2p/rpc"), ssl=self._context(peer), max_msg_size=1 << 20
        )

    async def _poll(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception:  # a bug must not end the polling for good
                log.exception("asking the peers for their load failed")
            await asyncio.sleep(EVERY_S)

    async def refresh(self) -> None:
        """Ask every paired peer for its models and load now."""
        peers = self.peers.list()
        loads = await asyncio.gather(*(self._hello(p) for p in peers))
        self.loads = {p.fingerprint: load for p, load in zip(peers, loads, strict=True)}

    async def _hello(self, peer: Peer, address: str | None = None) -> PeerLoad:
        """What the peer says of itself (at its address, or ``address``); an error in
        the load, never raised: a peer of another version must not stop the polling."""
        import aiohttp

        assert self._session is not None
        began = time.perf_counter()
        try:
            async with self._session.get(
                self._url(peer, "/p2p/hello", address),
                ssl=self._context(peer),
                timeout=aiohttp.ClientTimeout(total=HELLO_TIMEOUT_S),
            ) as resp:
                if resp.status != 200:
                    return PeerLoad(at=time.time(), error=f"HTTP {resp.status}")
                hello = await resp.json()
            latency = (time.perf_counter() - began) * 1000
            return _load(hello, latency)
        except (aiohttp.ClientError, TimeoutError, ValueError, TypeError, KeyError) as exc:
            return PeerLoad(at=time.time(), error=str(exc) or type(exc).__name__)

    async def answers_at(self, peer: Peer, address: str) -> bool:
        """Whether ``peer`` (its pinned certificate) answers at ``address``."""
        return not (await self._hello(peer, address)).error

    def offered(self) -> dict[str, str]:
        """Each model the peers offer, and the name of one peer offering it."""
        found: dict[str, str] = {}
        for peer in self.peers.list():
            for model in self.loads.get(peer.fingerprint, PeerLoad()).models:
                found.setdefault(model, peer.name)
        return found

    def choose(self, model: str) -> list[Peer]:
        """The peers that have ``model``, best first: loaded, least busy, nearest."""
        having = []
        for peer in self.peers.list():
            load = self.loads.get(peer.fingerprint)
            if load is not None and not load.error and model in load.models:
                rank = (model not in load.loaded, load.busy, load.latency_ms or 0.0)
                having.append((rank, peer))
        return [peer for _rank, peer in sorted(having, key=lambda x: x[0])]

    @contextlib.asynccontextmanager
    async def request(
        self, model: str, path: str, body: bytes, headers: dict[str, str]
    ) -> AsyncIterator[tuple[Peer, aiohttp.ClientResponse] | None]:
        """The answer of the best peer that takes the request for ``model`` (None: no
        peer has it); UnreachableError when every peer that has it failed to answer."""
        import aiohttp

        assert self._session is not None
        if not self.loads and self.peers.list():
            await self.refresh()  # the first request after a start: ask now
        chosen, failures = self.choose(model), []
        if not chosen:
            yield None
            return
        sent = {**headers, HOP_HEADER: self.identity.name}
        for peer in chosen:
            try:
                resp = await self._session.post(
                    self._url(peer, f"/p2p/relay{path}"),
                    data=body,
                    headers=sent,
                    ssl=self._context(peer),
                )
            except aiohttp.ClientError as exc:
                failures.append(f"{peer.name}: {exc}")
                self.loads.pop(peer.fingerprint, None)  # asked again at the next refresh
                continue
            try:
                yield peer, resp
            finally:
                resp.close()
            return
        raise UnreachableError(
            f"No peer that has {model!r} answers: {'; '.join(failures)}", param="model"
        )
