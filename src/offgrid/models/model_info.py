"""What the registry tells of one model: its file(s), metadata, hash and origin."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from offgrid.models.gguf_meta import GGUFInfo

__all__ = ["ModelInfo"]


@dataclass(frozen=True)
class ModelInfo:
    """One model OffGrid can serve."""

    id: str
    path: Path
    size: int
    mtime: float
    gguf: GGUFInfo | None
    error: str | None = None  # why the metadata could not be read, if it could not
    sha256: str | None = None  # as recorded at import or first verification
    origin: Mapping[str, Any] = field(default_factory=dict, compare=False)
    owned: bool = True  # in the models folder: removing the model deletes the file
    more_parts: tuple[Path, ...] = ()  # a split model's parts after the first (``path``)

    @property
    def files(self) -> tuple[Path, ...]:
        """Every file of the model: one, or each part of a split model."""
        return (self.path, *self.more_parts)

    @property
    def reference(self) -> bool:
        """A file registered where it lies, outside the model folders."""
        return bool(self.origin.get("reference"))

    def as_dict(self) -> dict[str, Any]:
        """What ``offgrid show`` and ``/api/models`` tell of the model."""
        g = self.gguf
        return {
            "id": self.id,
            "path": str(self.path),
            "size": self.size,
            "modified_at": self.mtime,
            "sha256": self.sha256,
            "origin": dict(self.origin),
            "owned": self.owned,
            "parts": len(self.files),
            "error": self.error,
            "architecture": g.architecture if g else None,
            "name": g.name if g else None,
            "parameters": g.parameters if g else None,
            "quantization": g.quantization if g else None,
            "context_length": g.context_length if g else None,
            "chat_template": g.chat_template if g else None,
            "layers": g.block_count if g else None,
        }
