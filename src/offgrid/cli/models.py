"""The installed models: ``show``, ``verify`` and ``remove`` (``list`` is in ``listing``)."""

from __future__ import annotations

from typing import Annotated

import typer

from offgrid.cli.common import human_size, print_status, settings_from
from offgrid.models.registry import Registry


def show(
    model: Annotated[str, typer.Argument(help="Model id")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    import json

    from rich.console import Console
    from rich.table import Table

    from offgrid.cli.common import file_progress
    from offgrid.engine.plan import estimate

    settings = settings_from()
    registry = Registry.for_settings(settings)
    info = registry.get(model)
    with file_progress() as progress:
        details = {**info.as_dict(), "sha256": registry.hash_of(info, progress)}
    details["memory"] = estimate(settings, info)
    if as_json:
        print(json.dumps(details, indent=2))
        return
    table = Table(show_header=False, box=None)
    for key, value in details.items():
        if key == "memory":
            value = ", ".join(
                f"{k.removesuffix('_bytes')} {human_size(v)}" for k, v in value.items()
            )
        elif key == "size":
            value = f"{human_size(value)} ({value:,} bytes)"
        elif key == "origin":
            value = ", ".join(f"{k}={v}" for k, v in value.items()) or "found in its folder"
        if value is not None:
            table.add_row(key, str(value))
    Console().print(table)


def verify(
    models: Annotated[list[str] | None, typer.Argument(help="Model ids (default: all)")] = None,
    accept: Annotated[
        bool, typer.Option(help="Record the current hash of a changed file as the good one")
    ] = False,
) -> None:
    from rich.console import Console

    from offgrid.cli.common import file_progress

    registry = Registry.for_settings(settings_from())
    with file_progress() as progress:
        checks = registry.verify(models or [], accept=accept, progress=progress)
    console = Console()
    style = {"OK": "green", "CHANGED": "red", "MISSING": "red"}
    for c in checks:
        note = f"  {c.detail}" if c.detail else ""
        print_status(console, style[c.status], c.status, f"{c.model_id}{note}")
    bad = [c for c in checks if c.status != "OK"]
    console.print(f"{len(checks) - len(bad)} OK, {len(bad)} not OK", highlight=False)
    if bad:
        raise typer.Exit(1)


def remove(
    model: Annotated[str, typer.Argument(help="Model id")],
    force: Annotated[bool, typer.Option(help="Unload it first if it is loaded")] = False,
) -> None:
    from rich.console import Console

    from offgrid.cli.client import call_server
    from offgrid.errors import EngineUnavailableError

    try:
        done = call_server("DELETE", f"/api/models/{model}", params={"force": force})["done"]
    except EngineUnavailableError:  # no server runs, so nothing has it loaded
        done = Registry.for_settings(settings_from()).remove(model)
    Console().print(f"{model}: {done}", highlight=False)
