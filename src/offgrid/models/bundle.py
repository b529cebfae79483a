"""Bundles: models in a folder to carry to another node (a USB stick), and back.

Layout (docs/decisions.md; compatible with the manifest of the Go project of this name)::

    <dest>/README.txt                  how to check and import it
    <dest>/offgrid-models/*.gguf       the models (and their projectors: mmproj-<id>.gguf)
    <dest>/offgrid-models/manifest.json
    <dest>/offgrid-models/SHA256SUMS   for `sha256sum -c`

The manifest lists each model with its id, size, sha256, GGUF metadata and projector
(a vision model's mmproj file, with its own name, size and sha256), and is signed
with the exporting node's key (``offgrid.models.keys``). Reading a bundle trusts nothing in
it: file names must be plain names inside the bundle folder, and hashes are checked as the
files are copied.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from offgrid import __version__
from offgrid.atomic_files import (
    NO_PROGRESS,
    SHA256_HEX,
    Progress,
    ReadBack,
    atomic_writer,
    check_free_space,
    clean_partials,
    copy_hashed,
    hash_file,
)
from offgrid.errors import BadRequestError
from offgrid.models.keys import Keys, signature_key
from offgrid.models.pairing import projector_name
from offgrid.models.registry import ModelInfo, Registry

__all__ = ["BUNDLE_DIR", "BundleEntry", "export_bundle", "find_manifest", "read_bundle"]

BUNDLE_DIR = "offgrid-models"
_META_KEYS = ("architecture", "name", "parameters", "quantization", "context_length")


@dataclass(frozen=True)
class BundleEntry:
    """One model file of a bundle, as its manifest describes it."""

    path: Path
    model_id: str
    sha256: str
    projector: tuple[Path, str] | None = None  # its vision projector's path and sha256


def find_manifest(folder: Path) -> Path | None:
    """The manifest of the bundle at ``folder`` (the bundle or the folder holding it)."""
    for candidate in (folder / BUNDLE_DIR / "manifest.json", folder / "manifest.json"):
        if candidate.is_file():
            return candidate
    return None


def safe_file_name(name: object, where: str) -> str:
    """``name`` if it is a plain ``.gguf`` file name; BadRequestError for anything that could
    point elsewhere (``..``, slashes, absolute paths, hidden names)."""
    if (
        not isinstance(name, str)
        or not name.endswith(".gguf")
        or name != Path(name).name
        or name.startswith(".")
        or any(c in name for c in "/\\\0")
    ):
        raise BadRequestError(
            f"{where} names the file {name!r}, which is not a plain .gguf file name; it was refused"
        )
    return name


def read_bundle(
    manifest_path: Path, keys: Keys, *, allow_untrusted: bool = False
) -> tuple[list[BundleEntry], str]:
    """The entries of a bundle and a note on its signature; refuses a bundle whose
    signature does not match, whose signer is not trusted (when trust is required), or
    whose manifest names unsafe paths."""
    folder = manifest_path.parent
    what = str(manifest_path)
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        models = manifest["models"]
        if not isinstance(models, list):
            raise TypeError("models is not a list")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BadRequestError(f"{what} is not a readable bundle manifest: {exc}") from exc
    note = keys.judge(signature_key(manifest, what), what, allow_untrusted=allow_untrusted)
    entries = []
    for item in models:
        if not isinstance(item, dict):
            raise BadRequestError(f"{what} has a model entry that is not an object")
        path, sha = _bundle_file(folder, item, what)
        model_id = str(item.get("model_id") or path.stem)
        safe_file_name(model_id + ".gguf", what)
        projector = item.get("projector")
        if projector is not None and not isinstance(projector, dict):
            raise BadRequestError(f"{what} gives {model_id} a projector that is not an object")
        projector_file = None if projector is None else _bundle_file(folder, projector, what)
        entries.append(BundleEntry(path, model_id, sha, projector_file))
    return entries, note


def _bundle_file(folder: Path, item: dict[str, Any], what: str) -> tuple[Path, str]:
    """The path and sha256 of a file a manifest lists, refused unless both are safe."""
    name = safe_file_name(item.get("file_name"), what)
    sha = str(item.get("sha256", "")).lower()
    if not SHA256_HEX.match(sha):
        raise BadRequestError(f"{what} gives {name} no valid sha256")
    path = folder / name
    if path.is_symlink():
        raise BadRequestError(f"{path} is a symbolic link; a bundle holds plain files")
    return path, sha


def export_bundle(
    registry: Registry,
    ids: list[str],
    dest: Path,
    *,
    keys: Keys | None,
    read_back: ReadBack = "sample",
    progress: Progress = NO_PROGRESS,
) -> Path:
    """Write the models ``ids`` as a bundle under ``dest``; return the manifest's path.

    Space is checked first; each file is copied and hashed in one pass and checked against
    the hash recorded for it; then ``read_back`` checks what the medium holds (sampled by
    default: ``atomic_files.copy_hashed``). A file
    already there with the right hash is kept, so an interrupted export can be rerun.
    """
    models = [registry.get(i) for i in ids]
    for m in models:
        if m.gguf is None:
            raise BadRequestError(f"{m.id} cannot be exported: {m.error}")
        if m.more_parts:
            raise BadRequestError(
                f"{m.id} is split in {1 + len(m.more_parts)} parts, which bundles do not carry "
                f"yet: copy its files ({m.path.name} and the rest) with the stick's own tools."
            )
    out = dest / BUNDLE_DIR
    files = {(m.id, src): target for m in models for src, target in _targets(m, out)}
    todo = {key for key, target in files.items() if not _already_there(registry, key[1], target)}
    need = sum(src.stat().st_size for _, src in todo)
    there = next(p for p in (out, *out.parents) if p.exists())  # before anything is made
    check_free_space(there, need, what=f"{len({i for i, _ in todo})} model(s)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadRequestError(f"Cannot create {out}: {exc.strerror}") from exc
    clean_partials(out)  # left by an export that was interrupted
    digests: dict[tuple[str, Path], tuple[str, str]] = {}
    for (model_id, src), target in files.items():
        recorded = registry.recorded_hash(src)
        if (model_id, src) in todo:
            digest = copy_hashed(
                src,
                target,
                expected=recorded,
                overwrite=True,
                read_back=read_back,
                progress=progress,
            )
            if recorded is None:
                registry.record(src, digest)
        else:
            digest = recorded or registry.file_hash(src)
        digests[model_id, src] = (target.name, digest)
    entries = [_entry(m, digests) for m in models]
    manifest: dict[str, Any] = {
        "format": "offgrid-bundle",
        "version": "1",
        "exporter": f"offgrid {__version__}",
        "created_at": datetime.now(UTC).isoformat(),
        "total_models": len(entries),
        "total_size_gb": round(sum(m.size for m in models) / 1e9, 3),
        "models": entries,
    }
    if keys is not None:
        manifest["signature"] = keys.sign(manifest)
    listed = [f for e in entries for f in (e, e.get("projector")) if f]
    sums = "".join(f"{f['sha256']}  {f['file_name']}\n" for f in listed)
    for path, text in (
        (out / "manifest.json", json.dumps(manifest, indent=2)),
        (out / "SHA256SUMS", sums),
        (dest / "README.txt", _readme(manifest, keys)),
    ):
        with atomic_writer(path) as fh:
            fh.write(text.encode())
    return out / "manifest.json"


def _targets(model: ModelInfo, out: Path) -> list[tuple[Path, Path]]:
    """(source, file in the bundle) of each file of ``model``: it, and its projector."""
    pairs = [(model.path, out / f"{model.id}.gguf")]
    if model.projector is not None:
        pairs.append((model.projector, out / projector_name(model.id)))
    return pairs


def _already_there(registry: Registry, src: Path, target: Path) -> bool:
    if not target.is_file() or target.stat().st_size != src.stat().st_size:
        return False
    return hash_file(target) == registry.file_hash(src)


def _entry(model: ModelInfo, digests: dict[tuple[str, Path], tuple[str, str]]) -> dict[str, Any]:
    """A model's manifest entry, from the (file name, sha256) of each of its files."""
    shown = model.as_dict()
    file_name, sha256 = digests[model.id, model.path]
    entry = {
        "file_name": file_name,
        "model_id": model.id,
        "quantization": shown["quantization"],
        "size": model.size - model.projector_size,
        "sha256": sha256,
        "gguf": {k: shown[k] for k in _META_KEYS},
    }
    if model.projector is not None:
        name, digest = digests[model.id, model.projector]
        entry["projector"] = {"file_name": name, "size": model.projector_size, "sha256": digest}
    return entry


def _readme(manifest: dict[str, Any], keys: Keys | None) -> str:
    lines = [
        "OffGrid LLM model bundle",
        "",
        f"{manifest['total_models']} model(s), {manifest['total_size_gb']} GB, made "
        f"{manifest['created_at']} by {manifest['exporter']}:",
        *(
            f"  {e['model_id']}  ({e['quantization']}, {e['size']:,} bytes)"
            for e in manifest["models"]
        ),
        "",
        "Import on the destination (copies, verifies every file, refuses a damaged one):",
        "  offgrid import /path/to/this/folder",
        "",
        "Check by hand:",
        f"  cd {BUNDLE_DIR} && sha256sum -c SHA256SUMS",
    ]
    if keys is not None:
        lines += [
            "",
            "The manifest is signed by this node key; trust it on the destination with:",
            f"  offgrid signing-key trust {keys.public_key()}",
        ]
    return "\n".join(lines) + "\n"
