"""Pairing: two nodes come to trust each other's certificate through a short one-time code.

One node opens a window (``offgrid peers pair``): it shows a code such as ``K7QX-M2PA``
(8 characters of Crockford's base32, 40 bits) for five minutes. The other node is given
the code and the first one's address (``offgrid peers pair ADDRESS CODE``); it connects
showing no certificate (server name ``pair.offgrid``), notes the certificate it is shown,
and sends its own certificate with a proof that it knows the code; the first node answers
with its own proof. Both proofs are HMACs, under a key stretched from the code with scrypt
and salted by the server's fingerprint, over both fingerprints and a fresh nonce: a node in
the middle that swapped certificates fails both, and one that records an exchange must
guess the code offline at scrypt's price (~2^39 tries of 40 ms for an even chance) before
the window closes. The window closes after one pairing or five wrong codes.

A fleet set up by scripts gives every node the same secret (``OFFGRID_P2P_TOKEN``, 16
characters at least): a node that presents it pairs at any time, with the same proofs.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Any

from offgrid.errors import ConfigError, PermissionDeniedError

__all__ = ["WINDOW_S", "Pairing", "derive_key", "new_code", "proof"]

WINDOW_S = 300.0
TRIES = 5  # wrong codes before a window closes
TOKEN_MIN = 16
_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford's base32: no I, L, O, U
_SAME = str.maketrans({"I": "1", "L": "1", "O": "0", "U": "V"})


def new_code() -> str:
    code = "".join(secrets.choice(_ALPHABET) for _ in range(8))
    return f"{code[:4]}-{code[4:]}"


def _normal(secret: str) -> str:
    """A code as typed (any case, dashes, spaces, O for 0) in one spelling; a token as is."""
    bare = secret.replace("-", "").replace(" ", "").upper().translate(_SAME)
    return bare if len(bare) == 8 and all(c in _ALPHABET for c in bare) else secret


def derive_key(secret: str, server_fingerprint: str) -> bytes:
    """The proofs' key: the code stretched with scrypt (16 MiB, ~40 ms), salted by the
    server's fingerprint so that no table serves two nodes."""
    salt = f"offgrid-pair-1 {server_fingerprint}".encode()
    return hashlib.scrypt(_normal(secret).encode(), salt=salt, n=2**14, r=8, p=1, dklen=32)


def holding(server_fp: str, client_fp: str, nonce: str) -> bytes:
    """What a joiner signs with its key: that it holds the key of the certificate it asks
    to have pinned (a code alone would let someone pin a certificate not theirs)."""
    return f"offgrid-pair-1 key {server_fp} {client_fp} {nonce}".encode()


def proof(key: bytes, role: str, server_fp: str, client_fp: str, nonce: str) -> str:
    """What ``role`` ("client" or "server") sends to show it knows the code."""
    message = f"offgrid-pair-1 {role} {server_fp} {client_fp} {nonce}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


@dataclass
class _Window:
    code: str
    closes: float
    tries: int = TRIES


class Pairing:
    """The server's side: the open window (if any) and the fleet token (if set)."""

    def __init__(self, token: str = "") -> None:
        if token and len(token) < TOKEN_MIN:
            raise ConfigError(f"OFFGRID_P2P_TOKEN must be {TOKEN_MIN} characters at least")
        self.token = token
        self._window: _Window | None = None

    def open(self, seconds: float = WINDOW_S) -> dict[str, Any]:
        """A new window, replacing any open one: its code and when it closes."""
        self._window = _Window(new_code(), time.time() + seconds)
        return self.state() | {"code": self._window.code}

    def close(self) -> None:
        self._window = None

    def state(self) -> dict[str, Any]:
        """Whether a window is open, until when, and how many wrong codes it still takes."""
        w = self._current()
        if w is None:
            return {"open": False, "token": bool(self.token)}
        return {
            "open": True,
            "closes_at": w.closes,
            "tries_left": w.tries,
            "token": bool(self.token),
        }

    def accepts(self) -> bool:
        """Whether a node could pair now (the listener refuses pairing handshakes if not)."""
        return bool(self.token) or self._current() is not None

    def check(self, server_fp: str, client_fp: str, nonce: str, their_proof: str) -> bytes:
        """The key of the code or token the client proved it knows; PermissionDeniedError
        (and one try fewer) if it proved neither. A window's code works once."""
        window = self._current()
        for secret in filter(None, (window.code if window else "", self.token)):
            key = derive_key(secret, server_fp)
            if hmac.compare_digest(proof(key, "client", server_fp, client_fp, nonce), their_proof):
                if window is not None and secret == window.code:
                    self._window = None
                return key
        if window is not None:
            window.tries -= 1
            if window.tries <= 0:
                self._window = None
        raise PermissionDeniedError(
            "Wrong pairing code: ask the other node for the code `offgrid peers pair` shows "
            "there (it is good for one pairing, for five minutes)."
        )

    def _current(self) -> _Window | None:
        if self._window is not None and time.time() >= self._window.closes:
            self._window = None
        return self._window
