"""Finding the models: the folders walked in order, then the references, against the index.

A folder model's id is its file name without ``.gguf``; the first folder wins a clash.
Hidden files (a copy in progress) are passed over. A model split in parts
(``NAME-00001-of-00003.gguf`` …, as the Hub serves large ones) is one model, ``NAME``,
found once every part is there; the engine opens the first part and finds the others beside
it. A file that ends before its GGUF header says it should (still being copied in) is not
found until it is whole.

A vision projector (a file named ``mmproj…``, or whose header says ``general.type`` mmproj
or architecture clip) is not a model: it is paired with a model of its folder
(``pairing``), or, for references, with the reference registered under the same id.

A file's GGUF header is read only when the file is new or its size or mtime changed: what
was read is kept in the index, and in memory for the life of the scanner.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path

from offgrid.errors import IncompleteGGUFError, OffGridError
from offgrid.models.gguf_meta import GGUFInfo, read_gguf_info
from offgrid.models.index import MetaRow, Session, stamp
from offgrid.models.model_info import ModelInfo
from offgrid.models.pairing import pair, projector_named

__all__ = ["Scanner", "split_name"]

_SPLIT = re.compile(r"^(.+)-(\d{5})-of-(\d{5})\.gguf$")

# (id, path as a str, stat, owned, further parts, group: its folder, or a reference's id)
_Candidate = tuple[str, str, os.stat_result, bool, tuple[Path, ...], str]


def split_name(file_name: str) -> tuple[str, int, int] | None:
    """(name, part, parts) of a split GGUF file name (``m-00002-of-00003.gguf`` →
    ``("m", 2, 3)``), or None for a whole file."""
    m = _SPLIT.match(file_name)
    return (m.group(1), int(m.group(2)), int(m.group(3))) if m else None


class Scanner:
    """Finds the complete models of ``folders`` (the first one owned) and the references."""

    def __init__(self, folders: Sequence[Path]) -> None:
        self._folders = folders
        self._memo: dict[str, tuple[int, int, GGUFInfo | None, str | None]] = {}

    def scan(self, session: Session) -> dict[str, ModelInfo]:
        """Every complete model, by id, storing in the index the headers it had to read."""
        rows = session.rows()
        found: dict[str, ModelInfo] = {}
        groups: dict[str, tuple[list[str], dict[str, ModelInfo]]] = {}  # models, projectors
        writes: list[MetaRow] = []
        for model_id, path, st, owned, more, group in self._candidates(rows):
            models, projectors = groups.setdefault(group, ([], {}))
            if model_id in found and model_id not in models:
                continue  # taken by an earlier folder (a reference's projector shares its id)
            info = self._describe(model_id, path, st, rows.get(path), owned, writes)
            if info is None:
                continue
            if projector_named(info.path.name) or (info.gguf is not None and info.gguf.projector):
                projectors[info.path.name] = info
            elif model_id not in found:
                found[model_id] = _with_parts(info, more)
                models.append(model_id)
        if writes:
            session.store_meta(writes)
        for models, projectors in groups.values():
            for model_id, name in pair(models, list(projectors)).items():
                found[model_id] = _with_projector(found[model_id], projectors[name])
        return found

    def forget(self, path: Path) -> None:
        """Drop what is remembered of ``path`` (call it with the index locked)."""
        self._memo.pop(str(path), None)

    def _candidates(self, rows: Mapping[str, sqlite3.Row]) -> list[_Candidate]:
        """(id, path, stat, owned, further parts) of each model the folders and references
        hold."""
        out: list[_Candidate] = []
        for folder in self._folders:
            owned = folder == self._folders[0]
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
                        out.append((model_id, entry.path, entry.stat(), owned, more, str(folder)))
                except OSError:
                    continue  # vanished between listing and stat
        for row in rows.values():
            if row["model_id"] is not None:
                try:
                    st = os.stat(row["path"])
                except OSError:
                    continue
                out.append((row["model_id"], row["path"], st, False, (), "\0" + row["model_id"]))
        return out

    def _describe(
        self,
        model_id: str,
        path: str,
        st: os.stat_result,
        row: sqlite3.Row | None,
        owned: bool,
        writes: list[MetaRow],
    ) -> ModelInfo | None:
        """The ModelInfo of one file, reading its header only if it is new or changed."""
        stat = stamp(st)
        memo = self._memo.get(path)
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
                meta, error = read_gguf_info(Path(path)), None
            except IncompleteGGUFError:
                return None
            except OffGridError as exc:
                meta, error = None, exc.message
            writes.append((path, *stat, json.dumps(meta.as_row()) if meta else None, error))
        self._memo[path] = (*stat, meta, error)
        origin = json.loads(row["origin"]) if row is not None and row["origin"] else {}
        sha = row["sha256"] if row is not None else None
        return ModelInfo(
            model_id, Path(path), st.st_size, st.st_mtime, meta, error, sha, origin, owned
        )


def _with_parts(model: ModelInfo, more: tuple[Path, ...]) -> ModelInfo:
    """A split model's info: its size is that of all its parts."""
    if not more:
        return model
    size = model.size + sum(p.stat().st_size for p in more)
    return dataclasses.replace(model, size=size, more_parts=more)


def _with_projector(model: ModelInfo, projector: ModelInfo) -> ModelInfo:
    """A model's info with the projector that gives it vision (its size counted in)."""
    return dataclasses.replace(
        model,
        size=model.size + projector.size,
        projector=projector.path,
        projector_size=projector.size,
    )


def _cached(row: sqlite3.Row) -> tuple[GGUFInfo | None, str | None] | None:
    """The metadata stored in a row, or None if it must be read again."""
    if row["error"] is not None:
        return None, row["error"]
    if row["meta"] is None:
        return None
    try:
        return GGUFInfo.from_stored(json.loads(row["meta"])), None
    except (TypeError, ValueError, KeyError):
        return None  # written by another version: read the file again
