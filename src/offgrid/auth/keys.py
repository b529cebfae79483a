"""API keys: made at random, shown once, stored only as hashes.

A key is ``og-`` and 43 random URL-safe characters (256 bits), so a plain sha256 of it is
as good as a slow password hash (DESIGN.md: as vLLM and OpenAI's servers do); a presented
key is hashed and compared with every stored hash in constant time. Each key has a name,
a scope — ``read`` (models, chat, completions, embeddings, stats) or ``admin``
(everything, load, remove, import, pull, keys included) — and may expire. The file
(``DATA_DIR/api-keys.json``, mode 0600) is written atomically; the server reads it again
when it changes, so ``offgrid keys create`` and ``revoke`` take effect at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from offgrid.atomic_files import atomic_writer
from offgrid.errors import BadRequestError, ConfigError, NotFoundError

if TYPE_CHECKING:
    from offgrid.config import Settings

__all__ = ["SCOPES", "ApiKey", "KeyStore", "Scope"]

Scope = Literal["read", "admin"]
SCOPES: tuple[Scope, ...] = ("read", "admin")
PREFIX = "og-"


@dataclass(frozen=True)
class ApiKey:
    """One key as stored: everything but the key itself."""

    id: str  # the start of its hash: safe to show, to log and to revoke by
    name: str
    scope: Scope
    created_at: float
    expires_at: float | None
    sha256: str

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at

    def as_dict(self) -> dict[str, Any]:
        """What ``offgrid keys list`` shows (no hash)."""
        shown = asdict(self)
        del shown["sha256"]
        return shown


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class KeyStore:
    """The keys of one node, in one file; safe to share across threads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._keys: tuple[ApiKey, ...] = ()

    @classmethod
    def for_settings(cls, settings: Settings) -> KeyStore:
        return cls(settings.data_dir / "api-keys.json")

    def keys(self) -> tuple[ApiKey, ...]:
        """The keys now (the file is read again only when its size or mtime changed)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return ()
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        with self._lock:
            if stamp != self._stamp:
                self._keys, self._stamp = self._read(), stamp
            return self._keys

    def _read(self) -> tuple[ApiKey, ...]:
        try:
            rows = json.loads(self.path.read_text())["keys"]
            keys = tuple(ApiKey(**row) for row in rows)
            for k in keys:
                if not (
                    isinstance(k.sha256, str)
                    and isinstance(k.created_at, int | float)
                    and (k.expires_at is None or isinstance(k.expires_at, int | float))
                ):
                    raise TypeError(f"key {k.id!r} has fields of the wrong type")
            return keys
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(
                f"The API keys file {self.path} cannot be read ({exc}). Fix or remove it "
                "(then create the keys again with `offgrid keys create`)."
            ) from exc

    def _write(self, keys: tuple[ApiKey, ...]) -> None:
        with atomic_writer(self.path, mode=0o600) as out:
            out.write(json.dumps({"keys": [asdict(k) for k in keys]}, indent=2).encode())

    @contextlib.contextmanager
    def _changing(self) -> Iterator[tuple[ApiKey, ...]]:
        """The keys, held against other processes changing them until the block ends (so
        a create and a revoke at once cannot bring back a revoked key)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path.with_name(self.path.name + ".lock"), os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._stamp = None  # read it again, under the lock
            yield self.keys()
        finally:
            os.close(fd)  # releases the lock

    def create(self, name: str, scope: Scope = "admin", *, ttl: float | None = None) -> str:
        """Make a key; returns the key itself, which is never shown again."""
        if scope not in SCOPES:
            raise BadRequestError(f"A key's scope is read or admin, not {scope!r}.")
        if ttl is not None and ttl <= 0:
            raise BadRequestError("A key's lifetime must be positive (e.g. 30d, 12h).")
        secret = PREFIX + secrets.token_urlsafe(32)
        sha = _digest(secret)
        now = time.time()
        with self._changing() as existing:
            if any(k.name == name for k in existing):
                raise BadRequestError(
                    f"A key named {name!r} exists: revoke it or pick another name."
                )
            key = ApiKey(sha[:12], name, scope, now, now + ttl if ttl else None, sha)
            self._write((*existing, key))
        return secret

    def revoke(self, which: str) -> ApiKey:
        """Delete the key with this id or name."""
        with self._changing() as existing:
            for key in existing:
                if which in (key.id, key.name):
                    self._write(tuple(k for k in existing if k is not key))
                    return key
        raise NotFoundError(f"No API key has the id or name {which!r} (`offgrid keys list`).")

    def check(self, secret: str) -> ApiKey | None:
        """The live key ``secret`` is, or None: compared with every hash in constant time."""
        sha = _digest(secret)
        found = None
        for key in self.keys():
            if hmac.compare_digest(sha, key.sha256):
                found = key
        if found is None or found.expired(time.time()):
            return None
        return found
