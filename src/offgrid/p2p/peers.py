"""The peers this node trusts: each one's name, pinned certificate and last address.

Kept in ``<data dir>/p2p/peers.json``, written atomically and readable by the owner only;
the server is its one writer (the CLI asks the server). A peer is trusted from pairing
(``p2p.pairing``) until it is forgotten; its address follows it when discovery sees it
elsewhere, its certificate never changes (a new one is a new peer, to pair again).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from offgrid.atomic_files import atomic_writer
from offgrid.errors import BadRequestError, NotFoundError

__all__ = ["NAME", "Peer", "PeerStore"]

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")  # what a node may call itself


@dataclass(frozen=True)
class Peer:
    """A paired node."""

    name: str
    fingerprint: str  # sha256 of its certificate
    cert: str  # its certificate, PEM: the only one its connections may show
    address: str  # host:port of its peer listener, as last seen
    paired_at: float

    def public(self) -> dict[str, object]:
        """What the API shows of it (the certificate stays in the file)."""
        return {k: v for k, v in asdict(self).items() if k != "cert"}


class PeerStore:
    """The trusted peers, read once and written on every change."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._peers: dict[str, Peer] = {}  # by fingerprint
        if path.exists():
            for entry in json.loads(path.read_text(encoding="utf-8")).get("peers", []):
                peer = Peer(**entry)
                self._peers[peer.fingerprint] = peer

    def list(self) -> list[Peer]:
        return sorted(self._peers.values(), key=lambda p: p.name)

    def certs(self) -> tuple[str, ...]:
        """The pinned certificates, in a stable order (the listener caches by them)."""
        return tuple(p.cert for p in sorted(self._peers.values(), key=lambda p: p.fingerprint))

    def by_fingerprint(self, fingerprint: str) -> Peer | None:
        return self._peers.get(fingerprint)

    def get(self, name: str) -> Peer:
        """A peer by its name, or by its fingerprint or the start of it (8 digits at least)."""
        for peer in self._peers.values():
            if peer.name == name:
                return peer
        found = [
            p for p in self._peers.values() if len(name) >= 8 and p.fingerprint.startswith(name)
        ]
        if len(found) == 1:
            return found[0]
        known = ", ".join(p.name for p in self.list()) or "none yet: `offgrid peers pair`"
        raise NotFoundError(f"No paired peer is called {name!r} (paired: {known}).")

    def add(self, name: str, cert: str, fingerprint: str, address: str) -> Peer:
        """Trust a node from now on; a name another peer has gets its fingerprint's start."""
        if not NAME.match(name):
            raise BadRequestError(f"{name!r} is not a node name (letters, digits, . _ -)")
        if any(p.name == name and p.fingerprint != fingerprint for p in self._peers.values()):
            name = f"{name}-{fingerprint[:6]}"
        peer = Peer(name, fingerprint, cert, address, time.time())
        self._peers[fingerprint] = peer
        self._save()
        return peer

    def forget(self, name: str) -> Peer:
        """Trust a peer no more: its next connection fails the handshake."""
        peer = self.get(name)
        del self._peers[peer.fingerprint]
        self._save()
        return peer

    def seen_at(self, fingerprint: str, address: str) -> None:
        """A paired peer answers at ``address`` now (discovery saw it move)."""
        peer = self._peers.get(fingerprint)
        if peer is not None and peer.address != address:
            self._peers[fingerprint] = replace(peer, address=address)
            self._save()

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        entries = [asdict(p) for p in self.list()]
        with atomic_writer(self.path, mode=0o600) as fh:
            fh.write(json.dumps({"peers": entries}, indent=2).encode())
