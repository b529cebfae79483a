"""``offgrid run <model>``: chat in the terminal, with streaming output, multi-turn history,
``exit`` and ``clear``.

Reads one user message per line, from a terminal (with line editing) or a pipe, and prints
the reply as it streams: a reasoning model's thinking first, under "Thinking…" (dim on a
terminal), then its answer; only the answer joins the history. Ctrl-C during a reply stops
that reply; Ctrl-D or ``exit`` quits.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Annotated, TextIO

import typer

from offgrid.cli.client import api_url, model_ids, stream_reply
from offgrid.cli.common import settings_from
from offgrid.errors import ModelNotFoundError, OffGridError

__all__ = ["ChatSession", "run"]

_DIM, _PLAIN = "\033[2m", "\033[0m"


class ChatSession:
    """One conversation with one model."""

    def __init__(self, base_url: str, model: str, *, system: str | None = None) -> None:
        self.base_url = base_url
        self.model = model
        self.system = system
        self.history: list[dict[str, str]] = []
        self.clear()

    def check_model(self) -> None:
        """Fail early, naming the installed models, when the model does not exist."""
        ids = model_ids(self.base_url)
        if self.model not in ids:
            raise ModelNotFoundError(self.model, ids)

    def clear(self) -> None:
        self.history = [{"role": "system", "content": self.system}] if self.system else []

    def send(self, text: str, write: Callable[[str], None], *, styled: bool = False) -> str:
        """Send one user message, writing the reply as it streams (the thinking dim when
        ``styled``); keep the message and the answer in history."""
        self.history.append({"role": "user", "content": text})
        pieces: list[str] = []
        thinking = False
        try:
            for piece in stream_reply(self.base_url, self.model, self.history):
                if piece.reasoning and not thinking:
                    write(f"{_DIM}Thinking…\n" if styled else "Thinking…\n")
                elif thinking and not piece.reasoning:
                    write(f"{_PLAIN}\n\n" if styled else "\n\n")
                thinking = piece.reasoning
                if not thinking:
                    pieces.append(piece.text)
                write(piece.text)
        except KeyboardInterrupt:
            write("\n[stopped]")
        except OffGridError:
            self.history.pop()
            raise
        finally:
            if thinking and styled:
                write(_PLAIN)
        reply = "".join(pieces)
        self.history.append({"role": "assistant", "content": reply})
        return reply

    def loop(self, read_line: Callable[[], str], out: TextIO) -> None:
        """Chat until ``exit``/``quit`` or end of input."""

        def write(s: str) -> None:
            out.write(s)
            out.flush()

        while True:
            try:
                line = read_line()
            except EOFError:
                break
            text = line.strip()
            if not text:
                continue
            if text.lower() in ("exit", "quit", "/bye"):
                break
            if text.lower() == "clear":
                self.clear()
                write("[history cleared]\n")
                continue
            self.send(text, write, styled=out.isatty())
            write("\n")


def run(
    model: Annotated[str, typer.Argument(help="Model id, as `offgrid list` shows it")],
    system: Annotated[str | None, typer.Option(help="System prompt")] = None,
) -> None:
    """Uses the server on OFFGRID_HOST:OFFGRID_PORT when one runs; otherwise starts the
    engine in this process for the length of the chat.
    """
    interactive = sys.stdin.isatty()
    if interactive:
        import readline  # noqa: F401 - line editing and history for input()

    with api_url(settings_from()) as base_url:
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
