"""The ``offgrid`` command: thin shells over the library, one module per group of commands.

The group knows each command by its name and the one line ``offgrid --help`` shows for it
(``COMMANDS``); the module that holds the command is imported only when the command runs or
shows its own help, so no command pays for the imports of the others. ``offgrid --help``
and a command that takes no arguments (``offgrid list``) run without typer at all: its
import alone is 45 ms, a third of ``offgrid list``'s start (``cli.group`` builds the rest).
A command's docstring holds only what ``offgrid CMD --help`` adds below its line.

Library errors become CLI errors only here, at the edge: a message and exit status 1.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Callable

from offgrid.cli.commands import COMMANDS, HELP

__all__ = ["main"]


def _usage() -> str:
    """``offgrid --help``: every command and its line, as click lays it out."""
    width = max(map(len, COMMANDS))
    lines = [
        "Usage: offgrid [OPTIONS] COMMAND [ARGS]...",
        "",
        f"  {HELP}",
        "",
        "Options:",
        "  --help  Show this message and exit.",
        "",
        "Commands:",
    ]
    lines += [f"  {name:<{width}}  {line}" for name, (_t, line) in COMMANDS.items()]
    return "\n".join(lines)


def _plain(args: list[str]) -> Callable[[], object] | None:
    """The command function to call as it is: one that takes no arguments, given none."""
    if len(args) != 1 or args[0] not in COMMANDS:
        return None
    module, attribute = COMMANDS[args[0]][0].split(":")
    target = getattr(importlib.import_module(f"offgrid.cli.{module}"), attribute)
    if inspect.isfunction(target) and not inspect.signature(target).parameters:
        return target
    return None


def main() -> None:
    """Entry point of the console script."""
    from offgrid.errors import OffGridError

    args = sys.argv[1:]
    try:
        if not args or args == ["--help"]:
            print(_usage())  # `offgrid` alone: the same, with exit status 2, as click does
            sys.exit(0 if args else 2)
        plain = _plain(args)
        if plain is not None:
            plain()
        else:
            from offgrid.cli.group import app

            app.main(args=args, prog_name="offgrid")
    except OffGridError as exc:
        _fail(exc.message)
    except OSError as exc:  # a file that vanished or cannot be read: say which, no traceback
        where = f": {exc.filename}" if exc.filename else ""
        _fail(f"{exc.strerror or exc}{where}")
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # typer.Exit from a command called as it is (no click around)
        code = getattr(exc, "exit_code", None)
        if not isinstance(code, int):
            raise
        sys.exit(code)


def _fail(message: str) -> None:
    from rich.console import Console

    # soft_wrap: an error stays one line, whatever the width
    Console(stderr=True, soft_wrap=True).print(f"[red]Error:[/red] {message}", highlight=False)
    sys.exit(1)
