"""The ``offgrid`` group as typer builds it: each command known by its name and help line
(``COMMANDS``) and built, from its module, only when it runs or shows its own help."""

from __future__ import annotations

import importlib
from functools import cached_property
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup
from typer.main import get_command

from offgrid.cli.commands import COMMANDS, HELP

__all__ = ["app"]


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
    help=HELP,
    commands=[_Lazy(name, target, line) for name, (target, line) in COMMANDS.items()],
    context_settings={"default_map": {**_NO_HELP, **dict.fromkeys(COMMANDS, _NO_HELP)}},
)
