"""What this node asks of other nodes, over their peer listener (blocking: run in a thread).

``pair`` speaks to a node not yet trusted: one connection that shows no certificate,
notes the one it is shown, and carries the pairing exchange (``p2p.pairing``) over that
same connection, so no one can swap certificates between the two. ``PeerClient`` speaks
to a paired node: mutual TLS pinned to its certificate, through an ``httpx2`` client
(the one the Hub downloads use, so a peer's files arrive the same way).
"""

from __future__ import annotations

import http.client
import json
import secrets
import socket
import ssl
from typing import TYPE_CHECKING, Any

from offgrid.errors import BadRequestError, OffGridError, PermissionDeniedError, UnreachableError
from offgrid.p2p.identity import PAIRING_NAME, Identity, client_context, fingerprint
from offgrid.p2p.pairing import derive_key, holding, proof
from offgrid.p2p.peers import Peer

if TYPE_CHECKING:
    import httpx2

__all__ = ["Paired", "PeerClient", "host_port", "pair"]

DEFAULT_PORT = 11612
TIMEOUT = 10.0


def host_port(address: str, default: int = DEFAULT_PORT) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]:port`` → (host, port)."""
    text = address.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.removeprefix(":")
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, ""
    try:
        number = int(port) if port else default
    except ValueError:
        number = 0
    if not host or not 0 < number < 65536:
        raise BadRequestError(f"{address!r} is not an address: give host or host:port")
    return host, number


def address_of(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Paired(dict[str, Any]):
    """The other node, as pairing made it known: name, cert, fingerprint, address."""


def pair(me: Identity, address: str, secret: str, my_port: int) -> Paired:
    """Pair with the node at ``address`` using its code (or the fleet token): both sides
    prove they know it; returns that node, to pin. PermissionDeniedError for a wrong code,
    UnreachableError when nothing answers there."""
    host, port = host_port(address)
    ctx = client_context(me, None)
    try:
        with (
            socket.create_connection((host, port), timeout=TIMEOUT) as raw,
            ctx.wrap_socket(raw, server_hostname=PAIRING_NAME) as tls,
        ):
            return _exchange(me, tls, host, port, secret, my_port)
    except ssl.SSLError as exc:
        raise PermissionDeniedError(
            f"{address} refused to pair: it has no pairing window open. Run `offgrid peers "
            "pair` there first, then use the code it shows here within five minutes."
        ) from exc
    except OSError as exc:
        raise UnreachableError(f"Nothing answers at {address}: {exc.strerror or exc}") from exc


def _exchange(
    me: Identity, tls: ssl.SSLSocket, host: str, port: int, secret: str, my_port: int
) -> Paired:
    der = tls.getpeercert(binary_form=True)
    if der is None:
        raise UnreachableError(f"{host}:{port} showed no certificate: it is not an OffGrid node")
    server_fp = fingerprint(der)
    key = derive_key(secret, server_fp)
    nonce = secrets.token_hex(16)
    body = json.dumps(
        {
            "name": me.name,
            "cert": me.cert_pem,
            "port": my_port,
            "nonce": nonce,
            "proof": proof(key, "client", server_fp, me.fingerprint, nonce),
            "signature": me.sign(holding(server_fp, me.fingerprint, nonce)),
        }
    ).encode()
    head = (
        f"POST /p2p/pair HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    tls.sendall(head.encode() + body)
    resp = http.client.HTTPResponse(tls)
    resp.begin()
    answer = _json(resp.read(), f"{host}:{port}")
    if resp.status != 200:
        raise _error(resp.status, answer, f"{host}:{port}")
    cert = str(answer.get("cert", ""))
    expected = proof(key, "server", server_fp, me.fingerprint, nonce)
    if fingerprint(cert) != server_fp or answer.get("proof") != expected:
        raise PermissionDeniedError(
            f"{host}:{port} did not prove it knows the code: another machine may be "
            "answering in its place. Nothing was trusted."
        )
    return Paired(
        name=str(answer.get("name", "")),
        cert=cert,
        fingerprint=server_fp,
        address=address_of(host, port),
    )


def _json(data: bytes, who: str) -> dict[str, Any]:
    try:
        value = json.loads(data or b"{}")
    except ValueError as exc:
        raise UnreachableError(f"{who} answered something that is not JSON") from exc
    return value if isinstance(value, dict) else {}


def _error(status: int, body: dict[str, Any], who: str) -> OffGridError:
    """A peer's error, as ours: its message and status kept."""
    detail = body.get("error")
    message = str(detail.get("message") if isinstance(detail, dict) else "") or f"HTTP {status}"
    exc = OffGridError(f"{who}: {message}")
    exc.status = status
    return exc


class PeerClient:
    """A paired node, reached with mutual TLS; close it when done."""

    def __init__(self, me: Identity, peer: Peer) -> None:
        import httpx2

        self.peer = peer
        host, port = host_port(peer.address)
        self.base = f"https://{address_of(host, port)}"
        self.session: httpx2.Client = httpx2.Client(  # never through the Hub's proxies
            verify=client_context(me, peer.cert), timeout=TIMEOUT, trust_env=False
        )

    def url(self, path: str) -> str:
        return self.base + path

    def get(self, path: str) -> Any:
        """A JSON answer of the peer; its errors as ours, a lost connection Unreachable."""
        import httpx2

        try:
            resp = self.session.get(self.url(path))
        except (httpx2.HTTPError, OSError) as exc:
            raise UnreachableError(
                f"Peer {self.peer.name} at {self.peer.address} does not answer ({exc}); is "
                "it on, with P2P on, and does it still trust this node?"
            ) from exc
        body = _json(resp.content, f"peer {self.peer.name}")
        if resp.status_code != 200:
            raise _error(resp.status_code, body, f"peer {self.peer.name}")
        return body

    def close(self) -> None:
        self.session.close()
