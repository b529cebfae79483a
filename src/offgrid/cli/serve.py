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
) -> None:
    from offgrid.server import configure_logging, make_server

    settings = settings_from(host=host, port=port, models_dir=models_dir)
    configure_logging(settings.log_level)
    make_server(settings).run()
