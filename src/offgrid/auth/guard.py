"""The check every HTTP request passes before anything else: which key it needs, if any.

No key is needed while none exists on a server bound to loopback (a box used by its own
user, as before); bound beyond it, a server with no key left (the last one revoked, the file
removed) refuses everyone rather than opening up, unless ``insecure_no_auth`` says so.
Once one exists, every route needs ``Authorization: Bearer <key>`` (or ``x-api-key``, as
Anthropic's clients send it), except the health probes and the dashboard's static page
(which then asks for a key and sends it with each call). A ``read`` key may read anything
and run the inference routes; everything else (load, unload, remove, import, pull,
verify) needs an ``admin`` key.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import secrets
from collections.abc import Iterable
from typing import TYPE_CHECKING

from offgrid.auth.keys import ApiKey, KeyStore, Scope
from offgrid.errors import AuthenticationError, ConfigError, PermissionDeniedError

if TYPE_CHECKING:
    from offgrid.config import Settings

__all__ = ["OPEN_PATHS", "Guard", "needed_scope", "open_without_keys", "refuse_open_exposure"]

log = logging.getLogger("offgrid.auth")

OPEN_PATHS = frozenset({"/health", "/livez", "/readyz", "/", "/ui"})
OPEN_PREFIXES = ("/ui/static/",)
_READS = frozenset({"GET", "HEAD", "OPTIONS"})


def needed_scope(method: str, path: str, inference: frozenset[str]) -> Scope | None:
    """The scope a request needs: None for the open routes; ``read`` to read or to run an
    ``inference`` route; ``admin`` for the rest."""
    if path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
        return None
    if method in _READS or (method == "POST" and path in inference):
        return "read"
    return "admin"


def presented_key(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The key an ASGI request carries, from ``Authorization: Bearer`` or ``x-api-key``."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
        elif name == b"x-api-key" and value:
            return value.decode("latin-1").strip()
    return None


class Guard:
    """Says whether a request may go on, given the node's keys."""

    def __init__(
        self, store: KeyStore, inference: Iterable[str], *, open_without_keys: bool
    ) -> None:
        self.store = store
        self.inference = frozenset(inference)
        self.open_without_keys = open_without_keys  # loopback, or --insecure-no-auth
        # what the peer listener sends with a request a paired peer federated here: it may
        # run the inference routes, nothing else (made anew at each start, never stored)
        self.peer_key = secrets.token_urlsafe(32)

    def check(
        self, method: str, path: str, headers: Iterable[tuple[bytes, bytes]]
    ) -> ApiKey | None:
        """The key that allows the request (None: none was needed); raises
        AuthenticationError or PermissionDeniedError when it may not go on."""
        scope = needed_scope(method, path, self.inference)
        if scope is None:
            return None
        if not self.store.keys():
            if self.open_without_keys:
                return None
            raise AuthenticationError(
                "This server listens beyond loopback and has no API key left, so it refuses "
                "every request: make one with `offgrid keys create`."
            )
        secret = presented_key(headers)
        if secret is None:
            raise AuthenticationError(
                "This server needs an API key: send `Authorization: Bearer <key>`. An "
                "administrator makes one with `offgrid keys create`."
            )
        if (
            scope == "read"
            and method == "POST"
            and hmac.compare_digest(secret.encode(), self.peer_key.encode())
        ):
            return None
        key = self.store.check(secret)
        if key is None:
            raise AuthenticationError("Incorrect, revoked or expired API key provided.")
        if scope == "admin" and key.scope != "admin":
            raise PermissionDeniedError(
                f"The key {key.name!r} is read-only; this needs an admin key."
            )
        return key


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def open_without_keys(settings: Settings) -> bool:
    """Whether the API may be open while no key exists: on loopback, or when told to."""
    return _loopback(settings.host) or settings.insecure_no_auth


def refuse_open_exposure(settings: Settings) -> None:
    """ConfigError when the server would listen beyond loopback with no API key to ask for;
    with ``insecure_no_auth`` it goes ahead, with a warning in the log."""
    if _loopback(settings.host) or KeyStore.for_settings(settings).keys():
        return
    if settings.insecure_no_auth:
        log.warning(
            "SERVING %s WITH NO API KEY: anyone who can reach this address can use every "
            "route, admin ones included (OFFGRID_INSECURE_NO_AUTH / --insecure-no-auth)",
            settings.host,
        )
        return
    raise ConfigError(
        f"Refusing to serve on {settings.host} with no API key: anyone who can reach it could "
        "use and administer this server. Make a key first: `offgrid keys create --name NAME` "
        "(clients then send `Authorization: Bearer <key>`), or serve on 127.0.0.1. To serve "
        "without keys anyway, pass --insecure-no-auth (OFFGRID_INSECURE_NO_AUTH=1)."
    )
