"""The peer listener (``p2p_host:p2p_port``, 11612 by default): everything between nodes.

An aiohttp server on TLS 1.3 (``identity.server_context``). A connection that shows a
pinned certificate is that peer's; one that shows another certificate never completes
its handshake; one that shows none may only pair, and only while this node accepts
pairing (the handshake is refused otherwise: ``pair.offgrid`` names it). Routes:

    POST /p2p/pair                       the pairing exchange (``p2p.pairing``)
    GET  /p2p/hello                      name, version, fingerprint, models, load
    GET  /p2p/manifest                   the signed list of models and files (``manifest``)
    GET  /p2p/models/{model}/{file}      a model's file, with HTTP Range (resumable pulls)
    GET  /p2p/rpc                        a websocket to this node's RPC worker (``rpc``)
    POST /p2p/relay/{route}              a federated request (``federation``), handed to this
                                         server's own API as it came; its answer as it is made

A peer forgotten while connected is refused at its next request, not only its next
handshake.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

from offgrid.config import Settings
from offgrid.errors import BadRequestError, NotFoundError, OffGridError, PermissionDeniedError
from offgrid.models.registry import Registry
from offgrid.p2p.client import address_of
from offgrid.p2p.federation import HOP_HEADER
from offgrid.p2p.identity import Identity, checked_cert, fingerprint, signed_by
from offgrid.p2p.pairing import Pairing, holding, proof
from offgrid.p2p.peers import NAME, Peer, PeerStore
from offgrid.p2p.rpc import pipe_ws_to_tcp

if TYPE_CHECKING:
    import aiohttp
    from aiohttp import web

__all__ = ["Listener"]

log = logging.getLogger("offgrid.p2p")
_PAIR_BODY = 16 * 1024  # a name, a certificate, a nonce and a proof
Handler = Callable[["web.Request"], Awaitable["web.StreamResponse"]]


class Served(Protocol):
    """What the listener serves from (``p2p.node.Node``)."""

    identity: Identity
    peers: PeerStore
    pairing: Pairing
    registry: Registry
    peer_key: str
    settings: Settings

    def server_context(self) -> ssl.SSLContext: ...
    def rpc_port(self) -> int | None: ...
    def trust(self, name: str, cert: str, fingerprint: str, host: str, port: int) -> Peer: ...
    def hello(self) -> dict[str, Any]: ...
    def manifest(self) -> dict[str, Any]: ...


def _error(exc: OffGridError) -> web.Response:
    from aiohttp import web

    body = {"error": {"message": exc.message, "type": exc.type, "code": exc.code}}
    return web.json_response(body, status=exc.status)


class Listener:
    """The peer listener of one node; ``start()`` binds it, ``close()`` stops it."""

    def __init__(self, node: Served, relayed: frozenset[str]) -> None:
        self.node = node
        self.relayed = relayed  # the API routes a peer may send requests to: inference only
        self._runner: web.AppRunner | None = None
        self._local: aiohttp.ClientSession | None = None  # to this server's own API
        self._checking = asyncio.Lock()  # one pairing proof at a time: scrypt is dear
        self._open: dict[str, set[asyncio.Transport | None]] = {}  # by peer fingerprint
        self.port = 0

    async def start(self, host: str, port: int) -> None:
        from aiohttp import web

        max_body = self.node.settings.max_request_bytes  # a federated request's body
        app = web.Application(middlewares=[self._peer_only], client_max_size=max_body)
        app.router.add_post("/p2p/pair", self._pair)
        app.router.add_get("/p2p/hello", self._hello)
        app.router.add_get("/p2p/manifest", self._manifest)
        app.router.add_get("/p2p/models/{model}/{file}", self._file)
        app.router.add_post("/p2p/relay/{route:.+}", self._relay)
        app.router.add_get("/p2p/rpc", self._rpc)
        ctx = self.node.server_context()
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, ssl_context=ctx, shutdown_timeout=1.0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        log.info("peer listener on %s:%d (mutual TLS)", host, self.port)

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._local is not None:
            await self._local.close()

    @staticmethod
    def _peer_cert(request: web.Request) -> bytes | None:
        ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
        return ssl_object.getpeercert(binary_form=True) if ssl_object else None

    async def _peer_only(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Every route but pairing is for a paired peer's certificate (its connection kept
        by fingerprint, so that forgetting it ends them); pairing only while this node
        accepts it; errors in our shape."""
        try:
            if request.path == "/p2p/pair":
                if not self.node.pairing.accepts():
                    raise PermissionDeniedError("This node has no pairing window open.")
                return await handler(request)
            der = self._peer_cert(request)
            peer = self.node.peers.by_fingerprint(fingerprint(der)) if der else None
            if peer is None:
                raise PermissionDeniedError(
                    "This node does not trust you (never paired, or forgotten): pair again."
                )
            request["peer"] = peer
            open_now = self._open.setdefault(peer.fingerprint, set())
            transport = request.transport
            if transport is not None:
                open_now.add(transport)
            try:
                return await handler(request)
            finally:
                open_now.discard(transport)
        except OffGridError as exc:
            return _error(exc)

    def drop(self, fingerprint: str) -> None:
        """End every connection of a peer now (it was forgotten): a file, a stream, an RPC
        websocket it holds do not outlive its trust."""
        for transport in self._open.pop(fingerprint, set()):
            if transport is not None:
                transport.abort()

    _peer_only.__middleware_version__ = 1  # type: ignore[attr-defined]

    async def _pair(self, request: web.Request) -> web.Response:
        from aiohttp import web

        if (request.content_length or 0) > _PAIR_BODY:
            raise BadRequestError("The pairing request is too large")
        try:
            body = json.loads(await request.content.read(_PAIR_BODY + 1))
        except ValueError as exc:
            raise BadRequestError("The pairing request is not JSON") from exc
        if not isinstance(body, dict):
            raise BadRequestError("The pairing request is not an object")
        name, cert, nonce, their = (
            str(body.get(k, "")) for k in ("name", "cert", "nonce", "proof")
        )
        port = body.get("port")
        if not NAME.match(name) or not isinstance(port, int) or not 0 < port < 65536:
            raise BadRequestError("The pairing request needs a node name and a port")
        cert = checked_cert(cert)
        client_fp = fingerprint(cert)
        me = self.node.identity
        if len(nonce) != 32 or not signed_by(
            cert, holding(me.fingerprint, client_fp, nonce), str(body.get("signature", ""))
        ):
            raise BadRequestError("The pairing request is not signed by its certificate's key")
        async with self._checking:  # scrypt, off the loop, one at a time (a guesser is slowed)
            key = await asyncio.to_thread(
                self.node.pairing.check, me.fingerprint, client_fp, nonce, their
            )
        host = request.remote or ""
        peer = self.node.trust(name, cert, client_fp, host, port)
        log.info("paired with %s (%s…) at %s", peer.name, client_fp[:16], peer.address)
        answer = proof(key, "server", me.fingerprint, client_fp, nonce)
        return web.json_response({"name": me.name, "cert": me.cert_pem, "proof": answer})

    async def _hello(self, request: web.Request) -> web.Response:
        from aiohttp import web

        return web.json_response(self.node.hello())

    async def _manifest(self, request: web.Request) -> web.Response:
        from aiohttp import web

        return web.json_response(await asyncio.to_thread(self.node.manifest))

    async def _file(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web

        from offgrid.p2p.manifest import served_file

        model, name = request.match_info["model"], request.match_info["file"]
        path = await asyncio.to_thread(served_file, self.node.registry, model, name)
        log.info("peer %s pulls %s", request["peer"].name, path.name)
        return web.FileResponse(path, chunk_size=1024 * 1024)

    async def _relay(self, request: web.Request) -> web.StreamResponse:
        """A peer's federated request, through this server's own API (its key checks,
        scheduler, queue and errors), the answer streamed back as it comes."""
        import aiohttp
        from aiohttp import web

        path = "/" + request.match_info["route"]
        if path not in self.relayed:
            raise NotFoundError(f"{path} is not a route a peer may send requests to.")
        if self._local is None:
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=5)
            self._local = aiohttp.ClientSession(timeout=timeout, auto_decompress=False)
        settings = self.node.settings
        headers = {
            "content-type": request.headers.get("content-type", "application/json"),
            "authorization": f"Bearer {self.node.peer_key}",
            HOP_HEADER: request["peer"].name,
        }
        body = await request.read()
        url = f"http://{address_of(settings.reach_host, settings.port)}{path}"
        async with self._local.post(url, data=body, headers=headers) as local:
            answer = web.StreamResponse(status=local.status)
            for name in ("content-type", "retry-after", "cache-control"):
                if name in local.headers:
                    answer.headers[name] = local.headers[name]
            await answer.prepare(request)
            async for chunk in local.content.iter_any():
                await answer.write(chunk)
            await answer.write_eof()
            return answer

    async def _rpc(self, request: web.Request) -> web.StreamResponse:
        """One connection of a peer's engine to this node's RPC worker, as a websocket."""
        from aiohttp import web

        port = self.node.rpc_port()
        if port is None:
            raise NotFoundError("This node runs no RPC worker (offgrid rpc-worker starts one).")
        ws = web.WebSocketResponse(max_msg_size=1 << 20)  # a tunnel sends 256 KiB at most
        await ws.prepare(request)
        log.info("peer %s's engine uses this node's RPC worker", request["peer"].name)
        await pipe_ws_to_tcp(ws, port)
        return ws
