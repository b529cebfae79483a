"""The model registry: every model OffGrid can serve, with its metadata, hash and origin.

Models come from folders scanned in place, in order: the models folder (where imports are
written) and the extra folders (a mounted USB stick, a network share; read-only is fine).
A model may also be a *reference*: a file elsewhere (an Ollama blob, a HuggingFace cache
file) registered under an id by ``offgrid import --link`` and used where it lies. How the
folders are read is ``scan``'s job; what is known of each file is kept by ``index``.

The sha256 of a file is recorded at import or at its first verification. A file is hashed
again by ``verify``, or before a load when its size or mtime moved since; a hash that then
differs refuses the load (IntegrityError). Ids never become paths: a model is found by id
only through the listing, so no id reaches outside the folders.
"""

from __future__ import annotations

import builtins
import os
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from offgrid.errors import (
    ConflictError,
    IncompleteGGUFError,
    IntegrityError,
    ModelNotFoundError,
    OffGridError,
    StorageError,
)
from offgrid.models.gguf_meta import read_gguf_info
from offgrid.models.index import Index, stamp
from offgrid.models.model_info import ModelInfo
from offgrid.models.scan import Scanner, split_name

if TYPE_CHECKING:
    from offgrid.atomic_files import Progress
    from offgrid.config import Settings

__all__ = ["ModelInfo", "Registry", "Report", "split_name"]

RACY_NS = 2_000_000_000  # mtime ticks are coarse (jiffies, FAT's 2 s): younger is not trusted


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
        self._index = Index(index_path)
        self._scanner = Scanner(self.folders)

    @classmethod
    def for_settings(cls, settings: Settings) -> Registry:
        return cls(settings.model_folders, settings.data_dir / "registry.sqlite")

    def close(self) -> None:
        self._index.close()

    # -- listing ----------------------------------------------------------------------
    def list(self) -> builtins.list[ModelInfo]:
        """Every complete model of the folders and references, sorted by id."""
        with self._index.session() as s:
            found = self._scanner.scan(s)
        return sorted(found.values(), key=lambda m: m.id)

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
            before is not None and stamp(before) != stamp(st)
        )
        trusted = (st.st_size, 0 if racy else st.st_mtime_ns)
        with self._index.session() as s:
            s.store_hash(path, sha256, trusted, origin, model_id)

    def _recorded(self, path: Path) -> sqlite3.Row | None:
        with self._index.session() as s:
            return s.recorded(path)

    def vouched(self, path: Path) -> str | None:
        """The recorded hash of ``path`` if its size and mtime are still those recorded."""
        row = self._recorded(path)
        if row is None or stamp(path.stat()) != (row["sha_size"], row["sha_mtime_ns"]):
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
            actual = self._hash(path, None, record_if=recorded.__eq__)
            if actual != recorded:
                raise IntegrityError(_changed(model, recorded, actual, path))
        return model

    def hash_of(self, model: ModelInfo, progress: Progress | None = None) -> str:
        """The model's recorded hash, hashing and recording it first if it has none."""
        if model.sha256 is not None:
            return model.sha256
        return self.file_hash(model.path, progress)

    def recorded_hash(self, path: Path) -> str | None:
        """The hash recorded for ``path`` (one of a model's files), whatever its stat now."""
        row = self._recorded(path)
        return None if row is None else str(row["sha256"])

    def file_hash(self, path: Path, progress: Progress | None = None) -> str:
        """The recorded hash of ``path``, hashing and recording it first if it has none."""
        return self.recorded_hash(path) or self._hash(path, progress, record_if=lambda _h: True)

    def _hash(self, path: Path, progress: Progress | None, record_if: Callable[[str], bool]) -> str:
        """Hash ``path``, recording the result when ``record_if`` accepts it."""
        # Here, not at the top: atomic_files brings psutil and thread pools, not needed to list.
        from offgrid.atomic_files import NO_PROGRESS, hash_file

        before = path.stat()
        digest = hash_file(path, NO_PROGRESS if progress is None else progress)
        if record_if(digest):
            self.record(path, digest, before=before)
        return digest

    def verify(
        self,
        ids: Sequence[str] = (),
        *,
        accept: bool = False,
        progress: Progress | None = None,
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

    def _verify_one(self, model: ModelInfo, accept: bool, progress: Progress | None) -> Report:
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
        with self._index.session() as s:
            files = s.recorded_files()
        return [(model_id or _id_of(path), path, model_id is not None) for model_id, path in files]

    # -- removal ----------------------------------------------------------------------
    def remove(self, model_id: str) -> str:
        """Delete a model: its files if OffGrid owns it (its projector too, unless another
        model uses it), its records in any case.

        A reference only forgets the file (it belongs to another tool); a file of an extra
        folder is refused (delete it there). Returns what was done, for the user.
        """
        gone = {
            i: p for i, (p, (status, _)) in self._unlisted(set()).items() if status == "MISSING"
        }
        if model_id in gone:
            self._forget(gone[model_id])
            return f"forgot {model_id} (its file {gone[model_id]} was already gone)"
        models = self.list()
        model = next((m for m in models if m.id == model_id), None)
        if model is None:
            raise ModelNotFoundError(model_id, [m.id for m in models])
        if model.reference:
            for path in model.files:
                self._forget(path)
            return f"forgot {model_id}; its file {model.path} was left where it is"
        if not model.owned:
            raise ConflictError(
                f"{model_id} lives in {model.path.parent}, a folder OffGrid reads but does not "
                "own. Delete the file there, or take the folder out of OFFGRID_EXTRA_MODEL_DIRS."
            )
        shared = model.projector is not None and any(
            m.projector == model.projector for m in models if m.id != model_id
        )
        for path in model.files:
            if path == model.projector and shared:
                continue  # it gives vision to another quantization of the model too
            try:
                path.unlink()
            except OSError as exc:
                raise StorageError(f"Cannot delete {path}: {exc.strerror}") from exc
            self._forget(path)
        more = f" and its {len(model.more_parts)} other parts" if model.more_parts else ""
        if model.projector is not None:
            more += (
                " (its projector kept: another model uses it)" if shared else " and its projector"
            )
        return f"deleted {model.path}{more}"

    def _forget(self, path: Path) -> None:
        with self._index.session() as s:
            self._scanner.forget(path)
            s.forget(path)


def _id_of(path: Path) -> str:
    """The id a file in a model folder gives its model."""
    split = split_name(path.name)
    return split[0] if split else path.stem


def _changed(model: ModelInfo, recorded: str, actual: str, path: Path | None = None) -> str:
    return (
        f"The file of model '{model.id}' ({path or model.path}) changed since its hash was "
        f"recorded (sha256 {recorded[:16]}… then, {actual[:16]}… now), so OffGrid will not use it. "
        "Import it again from a good copy; if you changed it on purpose, run "
        f"`offgrid verify --accept {model.id}`."
    )
