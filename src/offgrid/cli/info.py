"""``offgrid info``: engine, machine and models folder."""

from __future__ import annotations

import os

from rich.console import Console
from rich.table import Table

from offgrid.cli.common import human_size, settings_from
from offgrid.config import config_file_path
from offgrid.engine.build import find_engine
from offgrid.errors import OffGridError
from offgrid.models.registry import Registry
from offgrid.resources import system_facts


def info() -> None:
    settings = settings_from()
    table = Table(show_header=False, box=None)
    try:
        engine = find_engine(settings)
        table.add_row("Engine", str(engine.path))
        table.add_row("Engine version", engine.version())
        table.add_row("Engine backend", engine.backend)
    except OffGridError as exc:
        table.add_row("Engine", f"[yellow]not installed[/yellow]: {exc.message}")
    facts = system_facts()
    table.add_row("CPU", f"{facts.cpu_model} ({facts.cpu_cores} cores)")
    table.add_row(
        "RAM",
        f"{human_size(facts.ram_total)} total, {human_size(facts.ram_available)} available",
    )
    for gpu in facts.gpus or ():
        table.add_row(
            f"GPU {gpu.index}",
            f"{gpu.name} ({human_size(gpu.total)}, {human_size(gpu.free)} free, "
            f"compute capability {gpu.compute_capability})",
        )
    if not facts.gpus:
        table.add_row("GPU", "none detected")
    models = Registry.for_settings(settings).list()
    table.add_row("Models folder", f"{settings.models_dir} ({len(models)} models)")
    table.add_row("Config file", str(config_file_path(os.environ) or "none"))
    table.add_row("API", f"http://{settings.host}:{settings.port}")
    Console().print(table)
