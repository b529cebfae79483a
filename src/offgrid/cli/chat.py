"""``offgrid run <model>``: chat in the terminal."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from offgrid.cli.common import settings_from


def register(app: typer.Typer) -> None:
    @app.command("run")
    def run(
        model: Annotated[str, typer.Argument(help="Model id, as `offgrid list` shows it")],
        system: Annotated[str | None, typer.Option(help="System prompt")] = None,
    ) -> None:
        """Chat with a model: streaming replies, history; 'clear' resets, 'exit' quits.

        Uses the server on OFFGRID_HOST:OFFGRID_PORT when one runs; otherwise starts the
        engine in this process for the length of the chat.
        """
        from offgrid.chat import ChatSession
        from offgrid.server import api_url

        settings = settings_from()
        interactive = sys.stdin.isatty()
        if interactive:
            import readline  # noqa: F401 - line editing and history for input()

        with api_url(settings) as base_url:
            session = ChatSession(base_url, model, system=system)
            session.check_model()
            if interactive:
                print(f"Chatting with {model}. 'clear' resets the history, 'exit' quits.")

            def read_line() -> str:
                if interactive:
                    return input(">>> ")
                line = sys.stdin.readline()
                if not line:
                    raise EOFError
                return line

            session.loop(read_line, sys.stdout)
