"""``offgrid config show|init|validate``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
import yaml
from rich.console import Console
from rich.table import Table

from offgrid.atomic_files import atomic_writer
from offgrid.cli.common import settings_from
from offgrid.config import (
    FIELDS,
    SECRETS,
    Settings,
    config_file_path,
    load_settings,
    read_config_file,
)


def _as_file(settings: Settings) -> dict[str, dict[str, object]]:
    """The settings as a config file's tree; secrets stay out (the file is 0644)."""
    tree: dict[str, dict[str, object]] = {}
    for s in FIELDS:
        if s.name in SECRETS:
            continue
        section, key = s.file_key.split(".", 1)
        value = getattr(settings, s.name)
        tree.setdefault(section, {})[key] = str(value) if isinstance(value, Path) else value
    return tree


app = typer.Typer(no_args_is_help=True, add_completion=False)


@app.command("show")
def show() -> None:
    """Every setting, its value and where the value came from."""
    settings = settings_from()
    table = Table(title=f"Config file: {config_file_path(os.environ) or 'none'}")
    for column in ("VARIABLE", "VALUE", "SOURCE", "MEANING"):
        table.add_column(column)
    for row in settings.as_rows():
        table.add_row(*row)
    Console().print(table)


@app.command("init")
def init(
    path: Annotated[Path | None, typer.Argument(help="Where to write it")] = None,
    force: Annotated[bool, typer.Option(help="Overwrite an existing file")] = False,
) -> None:
    """Write a config file holding the current settings."""
    home = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    target = path or home / "offgrid" / "config.yaml"
    if target.exists() and not force:
        raise typer.BadParameter(f"{target} exists; pass --force to overwrite it")
    with atomic_writer(target) as fh:
        fh.write(yaml.safe_dump(_as_file(settings_from()), sort_keys=False).encode())
    Console().print(f"Wrote {target}")


@app.command("validate")
def validate(path: Annotated[Path, typer.Argument(help="Config file to check")]) -> None:
    """Check a config file: readable, valid YAML/JSON, every value of the right type."""
    read_config_file(path)
    load_settings({**os.environ, "OFFGRID_CONFIG": str(path)})
    Console().print(f"{path}: valid")
