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
