"""The ``offgrid`` command: thin shells over the library, one module per group of commands.

Library errors become CLI errors only here, at the edge: a message and exit status 1.
"""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from offgrid.errors import OffGridError

__all__ = ["app", "main"]

app = typer.Typer(
    name="offgrid",
    help="OffGrid LLM: offline-first LLM inference server (OpenAI-compatible API).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

err_console = Console(stderr=True, soft_wrap=True)  # an error stays one line, whatever the width


def _register() -> None:
    from offgrid.cli import (
        bench_cmd,
        chat,
        config_cmd,
        hub_cmd,
        info,
        models,
        running,
        serve,
        setup,
    )

    for module in (serve, chat, models, hub_cmd, running, bench_cmd, info, setup, config_cmd):
        module.register(app)


def main() -> None:
    """Entry point of the console script."""
    _register()
    try:
        app()
    except OffGridError as exc:
        err_console.print(f"[red]Error:[/red] {exc.message}", highlight=False)
        sys.exit(1)
    except OSError as exc:  # a file that vanished or cannot be read: say which, no traceback
        where = f": {exc.filename}" if exc.filename else ""
        err_console.print(f"[red]Error:[/red] {exc.strerror or exc}{where}", highlight=False)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
