"""The model registry: every model OffGrid can serve, with its metadata, hash and origin.

Models come from folders scanned in place, in order: the models folder (where imports are
written) and the extra folders (a mounted USB stick, a network share; read-only is fine).
A folder model's id is its file name without ``.gguf``; the first folder wins a clash.
A model may also be a *reference*: a file elsewhere (an Ollama blob, a HuggingFace cache
file) registered under an id by ``offgrid import --link`` and used where it lies.

What is known of each file is kept in SQLite (WAL: the server and the CLI share it), keyed
by path:
- its GGUF metadata, read again only when its size or mtime change;
- the sha256 recorded at import or at its first verification, with the size and mtime it
  had then. A file is hashed again by ``verify``, or before a load when its size or mtime
  moved since; a hash that then differs refuses the load (IntegrityError);
- where it came from (a file, an Ollama store, a hub repo, a bundle).

A model split in parts (``NAME-00001-of-00003.gguf`` …, as the Hub serves large ones) is
one model, ``NAME``, listed once every part is there; the engine opens the first part and
finds the others beside it. A file that ends before its GGUF header says it should (still
being copied in) is not listed until it is whole. Ids never become paths: a model is
found by id only through the listing, so no id reaches outside the folders.
"""

from __future__ import annotations

import builtins
import dataclasses
import json
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from offgrid.atomic_files import NO_PROGRESS, Progress, hash_file
from offgrid.errors import (
    ConflictError,
    IncompleteGGUFError,
    IntegrityError,
    ModelNotFoundError,
    OffGridError,
    StorageError,
)
from offgrid.models.gguf_meta import GGUFInfo, read_gguf_info

if TYPE_CHECKING:
    from offgrid.config import Settings

__all__ = ["ModelInfo", "Registry", "Report", "split_name"]

RACY_NS = 2_000_000_000  # mtime ticks are coarse (jiffies, FAT's 2 s): younger is not trusted
_SPLIT = re.compile(r"^(.+)-(\d{5})-of-(\d{5})\.gguf$")


def split_name(file_name: str) -> tuple[str, int, int] | None:
    """(name, part, parts) of a split GGUF file name (``m-00002-of-00003.gguf`` →
    ``("m", 2, 3)``), or None for a whole file."""
    m = _SPLIT.match(file_name)
    return (m.group(1), int(m.group(2)), int(m.group(3))) if m else None


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


@dataclass(frozen=True)
class Report:
    """What became of one model file, and why: ``verify`` says OK, CHANGED or MISSING;
    an import says imported, linked, skipped or refused (``path`` is then the source)."""

    model_id: str
    path: Path
    status: str
    detail: str = ""

    def as_dict(self) -> dict[str, str]:
        return {
            "model_id": self.model_id,
            "path": str(self.path),
            "status": self.status,
            "detail": self.detail,
        }


class Registry:
    """Lists, looks up and vouches for models; safe to share across threads."""

    def __init__(self, folders: Sequence[Path], index_path: Path) -> None:
        self.folders = list(folders)
        self.models_dir = self.folders[0]
        self._index_path = index_path
        self._lock = threading.Lock()
        self._memo: dict[str, tuple[int, int, GGUFInfo | None, str | None]] = {}
        self._db: sqlite3.Connection | None = None

    @classmethod
    def for_settings(cls, settings: Settings) -> Registry:
        return cls(settings.model_folders, settings.data_dir / "registry.sqlite")

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            self._index_path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self._index_path, timeout=30, check_same_thread=False)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(_SCHEMA)
            self._db = db
        return self._db

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    # -- listing ----------------------------------------------------------------------
    def list(self) -> builtins.list[ModelInfo]:
        """Every complete model of the folders and references, sorted by id."""
        with self._lock:
            db = self._conn()
            rows = {r["path"]: r for r in db.execute("SELECT * FROM files")}
            found: dict[str, ModelInfo] = {}
            writes: builtins.list[tuple[object, ...]] = []
            for model_id, path, st, owned, more in self._candidates(rows):
                if model_id not in found:
                    info = self._describe(model_id, path, st, rows.get(str(path)), owned, writes)
                    if info is not None:
                        found[model_id] = _with_parts(info, more)
            if writes:
                db.executemany(_UPSERT_META, writes)
                db.commit()
        return sorted(found.values(), key=lambda m: m.id)

    def _candidates(self, rows: Mapping[str, sqlite3.Row]) -> builtins.list[_Candidate]:
        """(id, path, stat, owned, further parts) of each model the folders and references
        hold."""
        out: builtins.list[_Candidate] = []
        for folder in self.folders:
            owned = folder == self.models_dir
            try:
                entries = {e.name: e for e in os.scandir(folder) if e.name.endswith(".gguf")}
            except OSError:
                continue  # a folder not there (yet): an unmounted stick
            for name, entry in sorted(entries.items()):
                split = split_name(name)
                if name.startswith(".") or (split and split[1] != 1):
                    continue  # hidden (a copy in progress), or a later part of a split model
                more = (
                    tuple(
                        Path(folder, f"{split[0]}-{i:05d}-of-{split[2]:05d}.gguf")
                        for i in range(2, split[2] + 1)
                    )
                    if split
                    else ()
                )
                if any(p.name not in entries for p in more):
                    continue  # a split model with parts missing: not loadable (yet)
                try:
                    if entry.is_file():
                        model_id = split[0] if split else name[:-5]
                        out.append((model_id, Path(entry.path), entry.stat(), owned, more))
                except OSError:
                    continue  # vanished between listing and stat
        for row in rows.values():
            if row["model_id"] is not None:
                try:
                    st = os.stat(row["path"])
                except OSError:
                    continue
                out.append((row["model_id"], Path(row["path"]), st, False, ()))
        return out

    def _describe(
        self,
        model_id: str,
        path: Path,
        st: os.stat_result,
        row: sqlite3.Row | None,
        owned: bool,
        writes: builtins.list[tuple[object, ...]],
    ) -> ModelInfo | None:
        """The ModelInfo of one file, reading its header only if it is new or changed."""
        stat = (st.st_size, st.st_mtime_ns)
        memo = self._memo.get(str(path))
        if memo is not None and memo[:2] == stat:
            meta, error = memo[2], memo[3]
        elif (
            row is not None
            and (row["size"], row["mtime_ns"]) == stat
            and (cached := _cached(row)) is not None
        ):
            meta, error = cached
        else:
            try:
                meta, error = read_gguf_info(path), None
            except IncompleteGGUFError:
                return None
            except OffGridError as exc:
                meta, error = None, exc.message
            writes.append((str(path), *stat, json.dumps(meta.as_dict()) if meta else None, error))
        self._memo[str(path)] = (*stat, meta, error)
        origin = json.loads(row["origin"]) if row is not None and row["origin"] else {}
        sha = row["sha256"] if row is not None else None
        return ModelInfo(model_id, path, st.st_size, st.st_mtime, meta, error, sha, origin, owned)

    def ids(self) -> builtins.list[str]:
        return [m.id for m in self.list()]

    def get(self, model_id: str) -> ModelInfo:
        """The model with this id, or ModelNotFoundError naming the installed ones."""
        models = self.list()
        for model in models:
            if model.id == model_id:
                return model
        raise ModelNotFoundError(model_id, [m.id for m in models])

    # -- hashes and origins -----------------------------------------------------------
    def record(
        self,
        path: Path,
        sha256: str,
        *,
        origin: Mapping[str, Any] | None = None,
        model_id: str | None = None,
        before: os.stat_result | None = None,
    ) -> None:
        """Remember ``path``'s hash as it is now (and where it came from, and for a
        reference its id).

        The stat is kept, so that later checks can trust an unchanged file without hashing
        it, except when it cannot be trusted: a file modified in the last seconds could
        change again within the same mtime tick unseen (git's "racy clean" case), and one
        whose stat moved since ``before`` (taken before hashing) changed while hashed.
        """
        st = path.stat()
        racy = time.time_ns() - st.st_mtime_ns < RACY_NS or (
            before is not None and _stamp(before) != _stamp(st)
        )
        with self._lock:
            db = self._conn()
            db.execute(
                _UPSERT_HASH,
                (
                    str(path),
                    model_id,
                    sha256,
                    st.st_size,
                    0 if racy else st.st_mtime_ns,
                    json.dumps(dict(origin)) if origin else None,
                ),
            )
            db.commit()

    def _recorded(self, path: Path) -> sqlite3.Row | None:
        with self._lock:
            row: sqlite3.Row | None = (
                self._conn()
                .execute("SELECT * FROM files WHERE path = ? AND sha256 IS NOT NULL", (str(path),))
                .fetchone()
            )
            return row

    def vouched(self, path: Path) -> str | None:
        """The recorded hash of ``path`` if its size and mtime are still those recorded."""
        row = self._recorded(path)
        if row is None or _stamp(path.stat()) != (row["sha_size"], row["sha_mtime_ns"]):
            return None
        recorded: str = row["sha256"]
        return recorded

    def checked(self, model_id: str) -> ModelInfo:
        """The model, once it is sure its files are those recorded: for loading.

        A file whose size and mtime are those recorded is trusted as is; otherwise it is
        hashed again, and a different hash raises IntegrityError with what to do.
        """
        model = self.get(model_id)
        for path in model.files:
            row = self._recorded(path)
            if row is None or self.vouched(path) is not None:
                continue
            recorded: str = row["sha256"]
            actual = self._hash(path, NO_PROGRESS, record_if=recorded.__eq__)
            if actual != recorded:
                raise IntegrityError(_changed(model, recorded, actual, path))
        return model

    def hash_of(self, model: ModelInfo, progress: Progress = NO_PROGRESS) -> str:
        """The model's recorded hash, hashing and recording it first if it has none."""
        if model.sha256 is not None:
            return model.sha256
        return self._hash(model.path, progress, record_if=lambda _h: True)

    def _hash(self, path: Path, progress: Progress, record_if: Callable[[str], bool]) -> str:
        """Hash ``path``, recording the result when ``record_if`` accepts it."""
        before = path.stat()
        digest = hash_file(path, progress)
        if record_if(digest):
            self.record(path, digest, before=before)
        return digest

    def verify(
        self,
        ids: Sequence[str] = (),
        *,
        accept: bool = False,
        progress: Progress = NO_PROGRESS,
    ) -> builtins.list[Report]:
        """Hash the models (``ids``, or all) again and compare with what was recorded.

        A model never hashed gets its hash recorded (OK). With ``accept`` a changed file's
        new hash is recorded instead of reported. Recorded files that are gone are MISSING.
        """
        listed = self.list()
        by_id = {m.id: m for m in listed}
        unlisted = self._unlisted({p for m in listed for p in m.files})
        unknown = [i for i in ids if i not in by_id and i not in unlisted]
        if unknown:
            raise ModelNotFoundError(unknown[0], sorted(by_id))
        checks = [
            self._verify_one(model, accept, progress)
            for model in listed
            if not ids or model.id in ids
        ]
        for model_id, (path, problem) in unlisted.items():
            if not ids or model_id in ids:
                checks.append(Report(model_id, path, *problem))
        return checks

    def _verify_one(self, model: ModelInfo, accept: bool, progress: Progress) -> Report:
        """Hash each file of ``model`` and compare (or record, or accept) as ``verify`` says."""
        note = ""
        for path in model.files:
            row = self._recorded(path)
            recorded: str | None = row["sha256"] if row is not None else None

            def keep(digest: str, recorded: str | None = recorded) -> bool:
                return accept or recorded is None or digest == recorded

            actual = self._hash(path, progress, record_if=keep)
            if recorded is None or accept:
                note = "hash recorded" if recorded is None else "new hash accepted"
            elif actual != recorded:
                return Report(model.id, path, "CHANGED", _changed(model, recorded, actual, path))
        return Report(model.id, model.path, "OK", note)

    def _unlisted(self, listed: set[Path]) -> dict[str, tuple[Path, tuple[str, str]]]:
        """Recorded files that the listing lacks: gone (MISSING), or cut short (CHANGED)."""
        found = {}
        for model_id, path, reference in self._recorded_files():
            if path in listed:
                continue
            if not path.exists():
                forget = f"{path} is gone; `offgrid remove {model_id}` forgets it"
                found[model_id] = (path, ("MISSING", forget))
            elif path.parent in self.folders or reference:
                try:
                    read_gguf_info(path)
                except IncompleteGGUFError as exc:
                    found[model_id] = (path, ("CHANGED", exc.message))
                except OffGridError:
                    pass
        return found

    def _recorded_files(self) -> builtins.list[tuple[str, Path, bool]]:
        """(id, path, is a reference) of every file with a recorded hash."""
        with self._lock:
            rows = self._conn().execute("SELECT path, model_id FROM files WHERE sha256 IS NOT NULL")
            return [
                (
                    r["model_id"] or _id_of(Path(r["path"])),
                    Path(r["path"]),
                    r["model_id"] is not None,
                )
                for r in rows
            ]

    # -- removal ----------------------------------------------------------------------
    def remove(self, model_id: str) -> str:
        """Delete a model: its file if OffGrid owns it, its record in any case.

        A reference only forgets the file (it belongs to another tool); a file of an extra
        folder is refused (delete it there). Returns what was done, for the user.
        """
        gone = {
            i: p for i, (p, (status, _)) in self._unlisted(set()).items() if status == "MISSING"
        }
        if model_id in gone:
            self._forget(gone[model_id])
            return f"forgot {model_id} (its file {gone[model_id]} was already gone)"
        model = self.get(model_id)
        if model.reference:
            self._forget(model.path)
            return f"forgot {model_id}; its file {model.path} was left where it is"
        if not model.owned:
            raise ConflictError(
                f"{model_id} lives in {model.path.parent}, a folder OffGrid reads but does not "
                "own. Delete the file there, or take the folder out of OFFGRID_EXTRA_MODEL_DIRS."
            )
        for path in model.files:
            try:
                path.unlink()
            except OSError as exc:
                raise StorageError(f"Cannot delete {path}: {exc.strerror}") from exc
            self._forget(path)
        more = f" and its {len(model.more_parts)} other parts" if model.more_parts else ""
        return f"deleted {model.path}{more}"

    def _forget(self, path: Path) -> None:
        with self._lock:
            self._memo.pop(str(path), None)
            db = self._conn()
            db.execute("DELETE FROM files WHERE path = ?", (str(path),))
            db.commit()


_Candidate = tuple[str, Path, os.stat_result, bool, tuple[Path, ...]]


def _with_parts(model: ModelInfo, more: tuple[Path, ...]) -> ModelInfo:
    """A split model's info: its size is that of all its parts."""
    if not more:
        return model
    size = model.size + sum(p.stat().st_size for p in more)
    return dataclasses.replace(model, size=size, more_parts=more)


def _id_of(path: Path) -> str:
    """The id a file in a model folder gives its model."""
    split = split_name(path.name)
    return split[0] if split else path.stem


def _stamp(st: os.stat_result) -> tuple[int, int]:
    return st.st_size, st.st_mtime_ns


def _cached(row: sqlite3.Row) -> tuple[GGUFInfo | None, str | None] | None:
    """The metadata stored in a row, or None if it must be read again."""
    if row["error"] is not None:
        return None, row["error"]
    if row["meta"] is None:
        return None
    try:
        return GGUFInfo.from_dict(json.loads(row["meta"])), None
    except (TypeError, ValueError, KeyError):
        return None  # written by another version: read the file again


def _changed(model: ModelInfo, recorded: str, actual: str, path: Path | None = None) -> str:
    return (
        f"The file of model '{model.id}' ({path or model.path}) changed since its hash was "
        f"recorded (sha256 {recorded[:16]}… then, {actual[:16]}… now), so OffGrid will not use it. "
        "Import it again from a good copy; if you changed it on purpose, run "
        f"`offgrid verify --accept {model.id}`."
    )
