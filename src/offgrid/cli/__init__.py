"""The ``offgrid`` command: thin shells over the library, one module per group of commands.

The group knows each command by its name and the one line ``offgrid --help`` shows for it
(``COMMANDS``); the module that holds the command is imported only when the command runs or
shows its own help, so no command pays for the imports of the others. A command's docstring
holds only what ``offgrid CMD --help`` adds below that line.

Library errors become CLI errors only here, at the edge: a message and exit status 1.
"""

from __future__ import annotations

import importlib
import sys
from functools import cached_property
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup
from typer.main import get_command

__all__ = ["COMMANDS", "app", "main"]

COMMANDS: dict[str, tuple[str, str]] = {
    # name: ("module:attribute" under offgrid.cli, the line `offgrid --help` shows for it)
    "serve": (
        "serve:serve",
        "Start the OpenAI-compatible HTTP server (Ctrl-C stops it and its engines).",
    ),
    "run": (
        "chat:run",
        "Chat with a model: streaming replies, history; 'clear' resets, 'exit' quits.",
    ),
    "list": (
        "models:list_models",
        "List installed models: id, size, quantization, architecture, context.",
    ),
    "show": (
        "models:show",
        "Show a model: metadata, chat template, memory estimate, path, sha256, origin.",
    ),
    "verify": (
        "models:verify",
        "Hash the models again: OK, CHANGED (differs from the recorded hash) or MISSING.",
    ),
    "remove": (
        "models:remove",
        "Remove a model: delete its file (a linked one is only forgotten).",
    ),
    "import": (
        "bundles:import_models",
        "Import models, verifying each: a damaged or clashing file is refused, a copy skipped.",
    ),
    "export": (
        "bundles:export",
        "Export models as a verified bundle (e.g. to a USB stick) that `offgrid import` reads.",
    ),
    "search": (
        "hub_cmd:search",
        "Search the HuggingFace Hub for GGUF models, with sizes and whether they fit here.",
    ),
    "download-hf": (
        "hub_cmd:download_hf",
        "Download a GGUF model from the Hub: resumable, sha256-verified, registered.",
    ),
    "catalog": (
        "hub_cmd:catalog",
        "Browse the model catalog: models picked for offline boxes, by name.",
    ),
    "download": (
        "hub_cmd:download",
        "Download a model from the catalog, checked against the catalog's sha256.",
    ),
    "quantization": (
        "hub_cmd:quantization",
        "The quantization levels: bits per weight, quality, and which fit this machine.",
    ),
    "ps": (
        "running:ps",
        "Show loaded models: memory, GPU layers, requests running and queued, expiry, pid.",
    ),
    "load": ("running:load", "Load a model in the running server now."),
    "stop": ("running:stop", "Unload a model from the running server."),
    "benchmark": (
        "benchmark:benchmark",
        "Prompt and generation tokens/s and time to first token at rising concurrency.",
    ),
    "info": (
        "info:info",
        "Show the engine binary, its version and backend, CPU, RAM and the models folder.",
    ),
    "setup": (
        "setup:setup",
        "Build llama-server (once per machine, cached) and place the starter model.",
    ),
    "keys": ("keys_cmd:app", "API keys: create (shown once), list, revoke."),
    "doctor": (
        "service_cmd:doctor",
        "Check the service, port, health, engine, models folder, disk, GPU and config.",
    ),
    "logs": ("service_cmd:logs", "Show the service's log from the journal (-f to follow)."),
    "pack": (
        "pack:pack",
        "Write an installer for boxes with no network: wheels, engine, models, all signed.",
    ),
    "signing-key": (
        "bundles:key_app",
        "This node's bundle-signing key and the signing keys it trusts.",
    ),
    "config": ("config_cmd:app", "Show, create or check the configuration."),
}


class _Lazy(TyperCommand):
    """A command known by its name and help line until it is invoked: then its module is
    imported and the target, a function or a ``typer.Typer`` group, built by typer."""

    def __init__(self, name: str, target: str, line: str) -> None:
        super().__init__(name=name, help=line, short_help=line)
        self.target = target

    @cached_property
    def real(self) -> Any:  # a click Command of typer's click (vendored or not)
        module, attribute = self.target.split(":")
        obj = getattr(importlib.import_module(f"offgrid.cli.{module}"), attribute)
        if not isinstance(obj, typer.Typer):
            single = typer.Typer(add_completion=False)
            single.command(self.name)(obj)
            obj = single
        command = get_command(obj)
        command.name = self.name
        command.help = "\n\n".join(p for p in (self.help, command.help) if p)
        return command

    def make_context(
        self, info_name: str | None, args: list[str], parent: Any = None, **extra: Any
    ) -> Any:
        return self.real.make_context(info_name, args, parent=parent, **extra)


# Typer (0.29) coerces an --help that was not given through a pydantic adapter, which
# costs every command the import of pydantic (about 100 ms); a default of False is a bool
# already and skips it.
_NO_HELP: dict[str, Any] = {"help": False}


class _Group(TyperGroup):
    """The ``offgrid`` group, whose own help is written as plain text: typer's rich help
    would import rich's markdown, tracebacks and more, 140 ms, to draw the same list."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        super(TyperGroup, self).format_help(ctx, formatter)  # click's, not typer's rich one

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if not args:  # `offgrid` alone: its help on stdout, exit status 2, as before
            typer.echo(ctx.get_help())
            ctx.exit(2)
        return super().parse_args(ctx, args)


app = _Group(
    name="offgrid",
    help="OffGrid LLM: offline-first LLM inference server (OpenAI-compatible API).",
    commands=[_Lazy(name, target, line) for name, (target, line) in COMMANDS.items()],
    context_settings={"default_map": {**_NO_HELP, **dict.fromkeys(COMMANDS, _NO_HELP)}},
)


def main() -> None:
    """Entry point of the console script."""
    from offgrid.errors import OffGridError

    try:
        app.main()
    except OffGridError as exc:
        _fail(exc.message)
    except OSError as exc:  # a file that vanished or cannot be read: say which, no traceback
        where = f": {exc.filename}" if exc.filename else ""
        _fail(f"{exc.strerror or exc}{where}")
    except KeyboardInterrupt:
        sys.exit(130)


def _fail(message: str) -> None:
    from rich.console import Console

    # soft_wrap: an error stays one line, whatever the width
    Console(stderr=True, soft_wrap=True).print(f"[red]Error:[/red] {message}", highlight=False)
    sys.exit(1)
