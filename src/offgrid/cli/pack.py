"""``offgrid pack``: the air-gapped installer, written to a folder (offgrid.pack)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

import offgrid
from offgrid.cli.bundles import keys_of
from offgrid.cli.common import file_progress, human_size, settings_from
from offgrid.errors import SetupError
from offgrid.models.registry import Registry
from offgrid.pack import DEFAULT_PYTHONS, PARTS, Reporter, make_pack


def pack(
    dest: Annotated[
        Path, typer.Argument(help="The folder to write it to, e.g. a new folder on a USB stick")
    ],
    models: Annotated[
        list[str] | None,
        typer.Option(help="A model to carry, by id (repeat it, or give ids with commas)"),
    ] = None,
    cpu_only: Annotated[
        bool, typer.Option("--cpu-only", help="Carry the CPU engine even where a CUDA one exists")
    ] = False,
    python: Annotated[
        str, typer.Option(help="The target boxes' python versions, with commas")
    ] = ",".join(DEFAULT_PYTHONS),
    source: Annotated[
        Path | None,
        typer.Option(help="The OffGrid source tree to carry (default: the one running)"),
    ] = None,
    refresh: Annotated[
        bool, typer.Option(help="Ask the package index even when the wheel cache has all")
    ] = False,
) -> None:
    """On the target, with no network: sudo bash DEST/install.sh (it checks every file first)."""
    settings = settings_from()
    ids = [i.strip() for m in models or [] for i in m.split(",") if i.strip()]
    console = Console(soft_wrap=True, highlight=False)
    with file_progress() as bar:
        pip_line = bar.bars.add_task("", total=None, visible=False)

        def say(line: str) -> None:
            bar.bars.console.print(line, highlight=False, soft_wrap=True)

        def activity(line: str) -> None:
            bar.bars.update(pip_line, description=line.strip()[:90], visible=bool(line.strip()))

        manifest = make_pack(
            dest,
            settings=settings,
            registry=Registry.for_settings(settings),
            keys=keys_of(settings),
            source=source or _running_source(),
            model_ids=ids,
            pythons=python.split(","),
            cpu_only=cpu_only,
            refresh=refresh,
            report=Reporter(step=say, activity=activity, progress=bar),
        )
    sizes = manifest["sizes"]
    for part in PARTS:
        console.print(f"  {part:<11} {human_size(sizes[part]):>10}")
    console.print(f"  {'total':<11} {human_size(sizes['total']):>10}  {dest}")
    console.print(f"Signed by {manifest['signer']}")
    console.print(f"On the target (no network needed): sudo bash {dest}/install.sh [--cpu-only]")


def _running_source() -> Path:
    """The source tree this offgrid runs from: a checkout (or an editable install), or
    the copy install.sh keeps beside the service's venv (PREFIX/source)."""
    for root in (Path(offgrid.__file__).resolve().parents[2], Path(sys.prefix).parent / "source"):
        if (root / "pyproject.toml").is_file() and (root / "src" / "offgrid").is_dir():
            return root
    raise SetupError("This offgrid was not installed from a source tree: give one with --source")
