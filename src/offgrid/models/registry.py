"""The model registry: the ``*.gguf`` files of the models folder, with their metadata.

A model's id is its file name without ``.gguf``. Metadata is cached in SQLite (stdlib
``sqlite3``) keyed by path, size and mtime, so a listing never re-reads an unchanged
file; a file that changes is read again. Ids never become paths: a request names a model
by id and gets it only if the listing has it, so no id can reach outside the folder.
"""

from __future__ import annotations

import builtins
import json
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

from offgrid.errors import ModelNotFoundError, OffGridError
from offgrid.models.gguf_meta import GGUFInfo, read_gguf_info

__all__ = ["ModelInfo", "Registry"]


@dataclass(frozen=True)
class ModelInfo:
    """One installed model."""

    id: str
    path: Path
    size: int
    mtime: float
    gguf: GGUFInfo | None
    error: str | None = None  # why the metadata could not be read, if it could not


class Registry:
    """Lists and looks up the models of one folder; safe to share across threads."""

    def __init__(self, models_dir: Path, index_path: Path) -> None:
        self.models_dir = models_dir
        self._index_path = index_path
        self._lock = threading.Lock()
        self._memo: dict[tuple[str, int, int], ModelInfo] = {}
        self._db: sqlite3.Connection | None = None

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            self._index_path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self._index_path, check_same_thread=False)
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS gguf_meta (path TEXT PRIMARY KEY,"
                " size INTEGER, mtime_ns INTEGER, meta TEXT)"
            )
        return self._db

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def list(self) -> builtins.list[ModelInfo]:
        """Every ``*.gguf`` in the folder, sorted by id (hidden and partial files skipped)."""
        if not self.models_dir.is_dir():
            return []
        found = []
        for path in sorted(self.models_dir.glob("*.gguf")):
            if path.name.startswith(".") or not path.is_file():
                continue
            found.append(self._info(path))
        return found

    def ids(self) -> builtins.list[str]:
        return [m.id for m in self.list()]

    def get(self, model_id: str) -> ModelInfo:
        """The model with this id, or ModelNotFoundError naming the installed ones."""
        for model in self.list():
            if model.id == model_id:
                return model
        raise ModelNotFoundError(model_id, self.ids())

    def _info(self, path: Path) -> ModelInfo:
        st = path.stat()
        key = (str(path), st.st_size, st.st_mtime_ns)
        with self._lock:
            if key in self._memo:
                return self._memo[key]
            meta, error = self._cached_meta(*key), None
            if meta is None:
                try:
                    meta = read_gguf_info(path)
                except OffGridError as exc:
                    error = exc.message
                else:
                    self._conn().execute(
                        "INSERT OR REPLACE INTO gguf_meta VALUES (?, ?, ?, ?)",
                        (*key, json.dumps(meta.as_dict())),
                    )
                    self._conn().commit()
            info = ModelInfo(path.stem, path, st.st_size, st.st_mtime, meta, error)
            self._memo[key] = info
            return info

    def _cached_meta(self, path: str, size: int, mtime_ns: int) -> GGUFInfo | None:
        row = (
            self._conn()
            .execute(
                "SELECT meta FROM gguf_meta WHERE path = ? AND size = ? AND mtime_ns = ?",
                (path, size, mtime_ns),
            )
            .fetchone()
        )
        if row is None:
            return None
        try:
            return GGUFInfo.from_dict(json.loads(row[0]))
        except (TypeError, ValueError, KeyError):
            return None  # an index written by another version: read the file again
