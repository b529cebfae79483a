"""``offgrid list``: the installed models."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from offgrid.cli.common import human_size, settings_from
from offgrid.models.registry import Registry


def register(app: typer.Typer) -> None:
    @app.command("list")
    def list_models() -> None:
        """List installed models: id, size, quantization, architecture, context."""
        settings = settings_from()
        registry = Registry.for_settings(settings)
        models = registry.list()
        console = Console()
        if not models:
            console.print(
                f"No models in {settings.models_dir}. Run `offgrid setup` or add .gguf files."
            )
            return
        table = Table(title=f"Models in {settings.models_dir}")
        for column in ("ID", "SIZE", "QUANT", "ARCH", "PARAMS", "CONTEXT"):
            table.add_column(column, no_wrap=column == "ID")
        for m in models:
            g = m.gguf
            if g is None:
                table.add_row(m.id, human_size(m.size), "?", f"unreadable: {m.error}", "", "")
                continue
            table.add_row(
                m.id,
                human_size(m.size),
                g.quantization,
                g.architecture,
                f"{g.parameters / 1e6:.0f}M"
                if g.parameters < 1e9
                else f"{g.parameters / 1e9:.1f}B",
                str(g.context_length),
            )
        console.print(table)
