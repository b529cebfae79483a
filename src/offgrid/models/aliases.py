"""Names made with ``/api/copy`` (Ollama's copy): more names for an installed model, kept in
``aliases.json`` in the data folder, written atomically; the config's aliases come on top."""

from __future__ import annotations

import json
from pathlib import Path

from offgrid.atomic_files import atomic_writer

__all__ = ["load_aliases", "save_aliases"]


def load_aliases(path: Path) -> dict[str, str]:
    """The stored names (none if the file is missing or damaged)."""
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(stored, dict):
        return {}
    return {str(k): str(v) for k, v in stored.items()}


def save_aliases(path: Path, aliases: dict[str, str]) -> None:
    """Store ``aliases`` (temp + fsync + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_writer(path) as out:
        out.write(json.dumps(aliases, indent=1, sort_keys=True).encode())
