"""The registry's index: what is known of each model file, kept in SQLite.

The index is one table keyed by path (WAL: the server and the CLI share it), holding:
- a file's GGUF metadata, with the size and mtime it was read at;
- the sha256 recorded at import or at its first verification, with the size and mtime the
  file had then (an mtime of 0 when that stat could not be trusted);
- for a *reference* (a file registered where it lies), its model id;
- where the file came from (a file, an Ollama store, a hub repo, a bundle), as JSON.

One connection serves every thread; a lock is held around each use of it.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["Index", "MetaRow", "Session", "stamp"]

MetaRow = tuple[str, int, int, str | None, str | None]  # path, size, mtime_ns, meta, error

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY,
    model_id TEXT,          -- the id of a reference; NULL for a file found in a folder
    size INTEGER, mtime_ns INTEGER, meta TEXT, error TEXT,  -- metadata, at this size/mtime
    sha256 TEXT, sha_size INTEGER, sha_mtime_ns INTEGER,    -- recorded hash, at that stat
    origin TEXT             -- JSON: where the file came from
)
"""
_UPSERT_META = """
INSERT INTO files (path, size, mtime_ns, meta, error) VALUES (?, ?, ?, ?, ?)
ON CONFLICT(path) DO UPDATE SET size = excluded.size, mtime_ns = excluded.mtime_ns,
    meta = excluded.meta, error = excluded.error
"""
_UPSERT_HASH = """
INSERT INTO files (path, model_id, sha256, sha_size, sha_mtime_ns, origin)
VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT(path) DO UPDATE SET sha256 = excluded.sha256, sha_size = excluded.sha_size,
    sha_mtime_ns = excluded.sha_mtime_ns, model_id = COALESCE(excluded.model_id, model_id),
    origin = COALESCE(excluded.origin, origin)
"""


def stamp(st: os.stat_result) -> tuple[int, int]:
    """The (size, mtime) by which a file is known unchanged."""
    return st.st_size, st.st_mtime_ns


class Session:
    """The statements of the index, run with its lock held (see ``Index.session``)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def rows(self) -> dict[str, sqlite3.Row]:
        """Every row, by path."""
        return {r["path"]: r for r in self._db.execute("SELECT * FROM files")}

    def store_meta(self, rows: Iterable[MetaRow]) -> None:
        """Keep the metadata just read of these files, at the stat it was read at."""
        self._db.executemany(_UPSERT_META, rows)
        self._db.commit()

    def store_hash(
        self,
        path: Path,
        sha256: str,
        stat: tuple[int, int],
        origin: Mapping[str, Any] | None,
        model_id: str | None,
    ) -> None:
        """Keep a file's hash with the (size, mtime) it is trusted at, and where it came
        from and its reference id when given."""
        origin_json = json.dumps(dict(origin)) if origin else None
        self._db.execute(_UPSERT_HASH, (str(path), model_id, sha256, *stat, origin_json))
        self._db.commit()

    def recorded(self, path: Path) -> sqlite3.Row | None:
        """The row of ``path`` if it has a recorded hash."""
        row: sqlite3.Row | None = self._db.execute(
            "SELECT * FROM files WHERE path = ? AND sha256 IS NOT NULL", (str(path),)
        ).fetchone()
        return row

    def recorded_files(self) -> list[tuple[str | None, Path]]:
        """(reference id or None, path) of every file with a recorded hash."""
        rows = self._db.execute("SELECT path, model_id FROM files WHERE sha256 IS NOT NULL")
        return [(r["model_id"], Path(r["path"])) for r in rows]

    def forget(self, path: Path) -> None:
        self._db.execute("DELETE FROM files WHERE path = ?", (str(path),))
        self._db.commit()


class Index:
    """The SQLite index at ``path``, opened on first use; safe to share across threads."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None

    @contextmanager
    def session(self) -> Iterator[Session]:
        """The index, locked for the ``with`` block (what else the block does is serialised
        with it: the registry's scan, and its memo)."""
        with self._lock:
            if self._db is None:
                self._path.parent.mkdir(parents=True, exist_ok=True)
                db = sqlite3.connect(self._path, timeout=30, check_same_thread=False)
                db.row_factory = sqlite3.Row
                db.execute("PRAGMA journal_mode=WAL")
                db.execute(_SCHEMA)
                self._db = db
            yield Session(self._db)

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
