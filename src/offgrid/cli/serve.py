"""``offgrid serve``: the HTTP server."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from offgrid.cli.common import settings_from


def serve(
    host: Annotated[str | None, typer.Option(help="Bind address [OFFGRID_HOST]")] = None,
    port: Annotated[int | None, typer.Option(help="Port [OFFGRID_PORT]")] = None,
    models_dir: Annotated[
        Path | None, typer.Option(help="Models folder [OFFGRID_MODELS_DIR]")
    ] = None,
    insecure_no_auth: Annotated[
        bool,
        typer.Option(
            "--insecure-no-auth",
            help="Serve beyond loopback with no API key: anyone who can reach it may use it",
        ),
    ] = False,
) -> None:
    from offgrid.logs import configure
    from offgrid.server import make_server

    settings = settings_from(
        host=host, port=port, models_dir=models_dir, insecure_no_auth=insecure_no_auth or None
    )
    configure(settings)
    make_server(settings).run()


def rpc_worker(
    port: Annotated[int | None, typer.Option(help="Port of the API [OFFGRID_PORT]")] = None,
    p2p_port: Annotated[
        int | None, typer.Option(help="Port of the peer listener [OFFGRID_P2P_PORT]")
    ] = None,
) -> None:
    """The server, with P2P on and llama.cpp's rpc-server as its child on 127.0.0.1:
    paired peers that split a model (OFFGRID_SPLIT_MODELS) put layers here, through the
    peer listener's mutual TLS only. Ctrl-C stops both."""
    from offgrid.logs import configure
    from offgrid.server import make_server

    settings = settings_from(port=port, p2p_port=p2p_port, p2p=True, rpc_worker=True)
    configure(settings)
    make_server(settings).run()
