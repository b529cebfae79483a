"""This node on the LAN: its identity, the peers it trusts, pairing, the peer listener,
discovery, pulls from peers, the peers' loads (for federation), and models split over
peers' RPC workers. Built by the runtime only when P2P is on; with it off, nothing of this
runs and nothing listens beyond loopback.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from offgrid import __version__
from offgrid.config import Settings
from offgrid.errors import EngineUnavailableError
from offgrid.hub.download import Origin
from offgrid.hub.pulls import Pull, Pulls
from offgrid.models.keys import Keys
from offgrid.models.registry import ModelInfo, Registry
from offgrid.p2p.client import PeerClient, address_of, pair
from offgrid.p2p.discovery import Discovery, Seen
from offgrid.p2p.federation import Federation
from offgrid.p2p.identity import Identity, server_context
from offgrid.p2p.listener import Listener
from offgrid.p2p.manifest import build, remote_model
from offgrid.p2p.pairing import Pairing
from offgrid.p2p.peers import NAME, Peer, PeerStore
from offgrid.p2p.rpc import RpcWorker, Tunnel, plan_split
from offgrid.placement import Memory, Placement
from offgrid.resources import available_memory

__all__ = ["Node", "node_name"]

log = logging.getLogger("offgrid.p2p")


def node_name(settings: Settings) -> str:
    """The name this node goes by: the setting, else the host's name (made safe)."""
    name = settings.node_name or socket.gethostname().split(".")[0]
    safe = "".join(c if c.isalnum() or c in "._-" else "-" for c in name).strip("-.")
    return safe if NAME.match(safe) else "offgrid"


Status = Callable[[], list[dict[str, object]]]
Plan = Callable[[ModelInfo, Memory], Placement]


class Node:
    """The LAN side of a server; ``await Node.start(...)``, then ``close()``.

    ``peer_key`` is the secret the listener sends when it hands a federated request to this
    server's own API, ``relayed`` the API routes such a request may take (the inference
    routes); ``status`` is set to the scheduler's (what is loaded, how busy) once it is
    built (it starts engines with ``engine_args``, so it comes after this node)."""

    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        pulls: Pulls,
        peer_key: str,
        relayed: frozenset[str],
    ) -> None:
        self.settings, self.registry, self.pulls = settings, registry, pulls
        self.peer_key = peer_key
        self.status: Status = list
        self.keys = Keys(settings.data_dir / "keys")
        self.identity = Identity.load(self.keys, node_name(settings))
        self.peers = PeerStore(settings.data_dir / "p2p" / "peers.json")
        self.pairing = Pairing(settings.p2p_token)
        self.listener = Listener(self, relayed)
        self.discovery: Discovery | None = None
        self.federation = Federation(self.identity, self.peers)  # peers' loads, and routing
        self.worker = _worker(settings) if settings.rpc_worker else None
        self.tunnels: dict[str, Tunnel] = {}  # to peers' RPC workers, by fingerprint
        self.split_models = {m.strip() for m in settings.split_models.split(",") if m.strip()}
        self._spread: dict[str, int] = {}  # models planned over workers: this box's RAM share
        self._clients: dict[str, PeerClient] = {}  # by fingerprint, for pulls
        self._retired: list[PeerClient] = []  # replaced while a pull may use them
        self._tasks: set[asyncio.Future[None]] = set()

    @classmethod
    async def start(
        cls,
        settings: Settings,
        registry: Registry,
        pulls: Pulls,
        peer_key: str,
        relayed: frozenset[str],
    ) -> Node:
        """This node on the LAN, listening (and announcing, and federating if asked)."""
        node = await asyncio.to_thread(lambda: cls(settings, registry, pulls, peer_key, relayed))
        await node.listener.start(settings.p2p_host, settings.p2p_port)
        await node.federation.start()
        if node.worker is not None:
            await node.worker.start()
        if not settings.p2p_discovery:
            return node
        node.discovery = Discovery(
            node.identity.name,
            node.identity.fingerprint,
            settings.p2p_host,
            node.listener.port,
            node._heard,
        )
        try:
            await node.discovery.start()
        except OSError as exc:  # no multicast here: peers by address still work
            log.warning("LAN discovery is off: %s", exc)
            node.discovery = None
        return node

    async def close(self) -> None:
        for tunnel in self.tunnels.values():
            await tunnel.close()
        if self.worker is not None:
            await self.worker.close()
        await self.federation.close()
        if self.discovery is not None:
            await self.discovery.close()
        await self.listener.close()
        for task in self._tasks:
            task.cancel()
        for client in (*self._clients.values(), *self._retired):
            client.close()

    def server_context(self) -> ssl.SSLContext:
        return server_context(self.identity, self.peers.certs, self.pairing.accepts)

    def _heard(self, seen: Seen) -> None:
        """A paired peer announced another address: followed once it answers there with
        its pinned certificate (an announcement proves nothing by itself)."""
        peer = self.peers.by_fingerprint(seen.fingerprint)
        if peer is None or peer.address == seen.address:
            return

        async def follow() -> None:
            if await self.federation.answers_at(peer, seen.address):
                self.peers.seen_at(peer.fingerprint, seen.address)

        task = asyncio.ensure_future(follow())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- what peers ask of this node ---------------------------------------------------
    def trust(self, name: str, cert: str, fingerprint: str, host: str, port: int) -> Peer:
        return self.peers.add(name, cert, fingerprint, address_of(host, port))

    def hello(self) -> dict[str, Any]:
        """Who this node is, its models, and how busy each loaded one is (for federation)."""
        loaded = [
            {"id": r["id"], "busy": int(str(r["active_requests"])) + int(str(r["queued_requests"]))}
            for r in self.status()
            if r.get("state") == "ready"
        ]
        return {
            "name": self.identity.name,
            "version": __version__,
            "fingerprint": self.identity.fingerprint,
            "models": [m.id for m in self.registry.list() if m.error is None],
            "loaded": loaded,
            "rpc": {"alive": self.worker.alive, "free_bytes": available_memory()}
            if self.worker
            else None,
        }

    def rpc_port(self) -> int | None:
        """Where this node's RPC worker listens (127.0.0.1), if it runs one."""
        return self.worker.port if self.worker is not None and self.worker.alive else None

    def manifest(self) -> dict[str, Any]:
        return build(self.registry, self.keys, self.identity.name)

    # -- what the admin asks (``/api/peers``) --------------------------------------------
    def state(self) -> dict[str, Any]:
        """This node, its paired peers, and the nodes heard on the LAN not paired yet."""
        heard = {s.fingerprint: s for s in (self.discovery.list() if self.discovery else [])}
        loads = self.federation.loads
        peers = [
            p.public()
            | {"seen": p.fingerprint in heard}
            | ({"load": loads[p.fingerprint].as_dict()} if p.fingerprint in loads else {})
            for p in self.peers.list()
        ]
        unpaired = [s.as_dict() for fp, s in heard.items() if self.peers.by_fingerprint(fp) is None]
        return {
            "enabled": True,
            "node": {
                "name": self.identity.name,
                "fingerprint": self.identity.fingerprint,
                "port": self.listener.port,
                "discovery": self.discovery is not None,
                "federation": self.settings.federation,
                "rpc_worker": self.rpc_port() is not None,
            },
            "pairing": self.pairing.state(),
            "peers": peers,
            "discovered": unpaired,
        }

    async def pair_with(self, address: str, secret: str) -> Peer:
        """Pair with the node at ``address`` (its code or the fleet token) and pin it."""
        other = await asyncio.to_thread(pair, self.identity, address, secret, self.listener.port)
        return self.peers.add(other["name"], other["cert"], other["fingerprint"], other["address"])

    def forget(self, name: str) -> Peer:
        """Trust a peer no more: its connections here end now, ours to it close, and its
        RPC tunnel with them."""
        peer = self.peers.forget(name)
        self.listener.drop(peer.fingerprint)
        client = self._clients.pop(peer.fingerprint, None)
        if client is not None:
            client.close()
        tunnel = self.tunnels.pop(peer.fingerprint, None)
        if tunnel is not None:
            self._tasks.add(asyncio.ensure_future(tunnel.close()))
        return peer

    def client(self, name: str) -> PeerClient:
        """The mutual-TLS client of a paired peer (kept, and dropped when it is forgotten)."""
        peer = self.peers.get(name)
        client = self._clients.get(peer.fingerprint)
        if client is None or client.peer != peer:
            if client is not None:  # a pull may still use it: closed with the node
                self._retired.append(client)
            client = self._clients[peer.fingerprint] = PeerClient(self.identity, peer)
        return client

    async def pull(self, name: str, model_id: str, rate: int | None = None) -> Pull:
        """Start pulling ``model_id`` from the peer ``name``: its signed manifest read
        first, each file then resumed, verified and registered as a Hub pull is."""
        client = self.client(name)
        peer = client.peer
        manifest = await asyncio.to_thread(client.get, "/p2p/manifest")
        remote = remote_model(manifest, peer.cert, peer.name, model_id)
        origin = Origin(
            f"peer {peer.name}",
            client.session,
            lambda f: client.url(f"/p2p/models/{quote(model_id, safe='')}/{quote(f.name)}"),
            {"kind": "peer", "peer": peer.name, "fingerprint": peer.fingerprint},
            headers={"accept-encoding": "identity"},  # the file's bytes, as hashed
            denied="it does not trust this node any more; pair again.",
        )
        return self.pulls.start(remote, rate=rate, origin=origin)

    # -- models split over peers' RPC workers (``p2p.rpc``) ---------------------------
    def spreading(self, plan: Plan) -> Plan:
        """The scheduler's ``plan``, which also places a model that does not fit this box
        over the peers' RPC workers when together they have room: this box then needs
        only its share (the layers go in proportion to free memory, ``engine_args``)."""

        def placed(model: ModelInfo, budget: Memory) -> Placement:
            best = plan(model, budget)
            self._spread.pop(model.id, None)
            others = sum(self._worker_room().values())
            if best.need.fits(budget) or not others or model.gguf is None:
                return best
            if best.need.ram > budget.ram + others:
                return best  # not even all together
            share = best.need.ram * budget.ram // (budget.ram + others)
            self._spread[model.id] = budget.ram
            log.info("%s does not fit here: planned over RPC workers", model.id)
            return Placement(best.gpu_layers, Memory(share, best.need.vram))

        return placed

    def _worker_room(self) -> dict[str, int]:
        """The free memory of each paired peer's RPC worker still usable (by fingerprint)."""
        room = {}
        for peer in self.peers.list():
            load = self.federation.loads.get(peer.fingerprint)
            tunnel = self.tunnels.get(peer.fingerprint)
            usable = load is not None and not load.error and load.rpc_free is not None
            if usable and not (tunnel is not None and tunnel.lost):
                assert load is not None and load.rpc_free is not None
                room[peer.fingerprint] = load.rpc_free
        return room

    async def engine_args(self, model: ModelInfo) -> list[str]:
        """The engine arguments that spread ``model`` over the peers' RPC workers: one set
        to split, or one planned over them because it does not fit here; none otherwise
        (it runs here alone)."""
        spread = self._spread.pop(model.id, None)
        if (model.id not in self.split_models and spread is None) or model.gguf is None:
            return []
        if not self.federation.loads:
            await self.federation.refresh()
        workers: dict[str, int] = {}
        for peer in self.peers.list():
            if (free := self._worker_room().get(peer.fingerprint)) is not None:
                tunnel = await self._tunnel(peer)
                workers[f"127.0.0.1:{tunnel.port}"] = free
        local = available_memory() if spread is None else spread
        split = plan_split(model.gguf.block_count, local, workers)
        if split is None and spread is not None:  # planned with workers now gone: no room
            raise EngineUnavailableError(
                f"{model.id} does not fit this box alone, and the RPC workers it was planned "
                "over are gone. Try again once a paired worker is back."
            )
        if split is None:
            log.info("%s starts on this box alone: no RPC worker of a peer can take it", model.id)
            return []
        log.info("%s: %d layers over RPC workers %s", model.id, split.layers, split.endpoints)
        return split.args()

    async def _tunnel(self, peer: Peer) -> Tunnel:
        tunnel = self.tunnels.get(peer.fingerprint)
        if tunnel is None:
            tunnel = Tunnel(peer.name, lambda: self.federation.rpc_socket(peer))
            await tunnel.start()
            self.tunnels[peer.fingerprint] = tunnel
        return tunnel


def _worker(settings: Settings) -> RpcWorker:
    from offgrid.engine.build import find_engine

    threads = settings.num_threads or (os.cpu_count() or 1)
    return RpcWorker(find_engine(settings).rpc_server, threads, settings.cache_dir / "logs")
