"""``offgrid list``: the installed models, one line each.

The command run most often, so it imports only what it needs, and no CLI framework: it
takes no arguments and ``offgrid`` calls it as it is.
"""

from __future__ import annotations

from offgrid.cli.common import human_size, print_columns, settings_from
from offgrid.models.registry import Registry

__all__ = ["list_models"]


def list_models() -> None:
    settings = settings_from()
    models = Registry.for_settings(settings).list()
    if not models:
        from rich.console import Console

        Console().print(
            f"No models in {settings.models_dir}. Run `offgrid setup`, `offgrid import` "
            "or add .gguf files."
        )
        return
    rows = []
    for m in models:
        g = m.gguf
        if g is None:
            rows.append([m.id, human_size(m.size), "?", f"unreadable: {m.error}", "", "", ""])
            continue
        params = g.parameters / 1e6
        rows.append(
            [
                m.id,
                human_size(m.size),
                g.quantization,
                g.architecture,
                f"{params:.0f}M" if params < 1000 else f"{params / 1000:.1f}B",
                str(g.context_length),
                ",".join(m.capabilities),
            ]
        )
    print_columns(["ID", "SIZE", "QUANT", "ARCH", "PARAMS", "CONTEXT", "CAPABILITIES"], rows)
