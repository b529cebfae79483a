"""``offgrid keys create|list|revoke``: the API keys clients must send once any exists.

The keys file lives in the data folder (``auth.keys``); a running server sees a change at
its next request, so there is nothing to restart.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated

import typer

from offgrid.cli.common import print_columns, settings_from

if TYPE_CHECKING:
    from offgrid.auth.keys import KeyStore

app = typer.Typer(add_completion=False, no_args_is_help=True)


def _store() -> KeyStore:
    from offgrid.auth.keys import KeyStore

    return KeyStore.for_settings(settings_from())


@app.command()
def create(
    name: Annotated[str, typer.Option(help="Who or what the key is for")] = "admin",
    scope: Annotated[
        str, typer.Option(help="read (models, chat, completions, embeddings) or admin (all)")
    ] = "admin",
    expires: Annotated[
        str | None, typer.Option(help="Lifetime: 30d, 12h, 90m (default: never expires)")
    ] = None,
) -> None:
    """Make a key and print it, once: it is stored only as a hash."""
    from offgrid.auth.keys import SCOPES
    from offgrid.errors import BadRequestError
    from offgrid.units import parse_duration

    if scope not in SCOPES:
        raise BadRequestError(f"--scope is read or admin, not {scope!r}.")
    ttl = parse_duration(expires) if expires else None
    secret = _store().create(name, scope, ttl=ttl)
    print(secret)
    typer.echo(
        f"API key {name!r} ({scope}) made. It is shown only now: keep it. Clients send "
        "`Authorization: Bearer <key>` (the offgrid CLI: OFFGRID_API_KEY=<key>).",
        err=True,
    )


@app.command("list")
def list_keys() -> None:
    """The keys: id, name, scope, when made and when they expire (never the keys)."""
    keys = _store().keys()
    if not keys:
        print("No API key: the API is open to whoever can reach it (127.0.0.1 by default).")
        return

    def when(t: float | None) -> str:
        return time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) if t else "never"

    rows = [[k.id, k.name, k.scope, when(k.created_at), when(k.expires_at)] for k in keys]
    print_columns(["ID", "NAME", "SCOPE", "CREATED", "EXPIRES"], rows)


@app.command()
def revoke(which: Annotated[str, typer.Argument(help="The key's id or name")]) -> None:
    """Revoke a key: requests that send it are refused from now on."""
    key = _store().revoke(which)
    print(f"Revoked {key.name!r} ({key.id}).")
