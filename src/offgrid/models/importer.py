"""``offgrid import``: bring models in from a file, a folder, a bundle or another tool.

Each file is checked to be a whole GGUF model, then either copied into the models folder
(one pass that copies and hashes, published only once verified: ``atomic_files``) or, with
``link``, registered where it lies. A file whose hash is already installed is skipped; a
name taken by a different model is refused, never overwritten. Copies left by a killed
import are removed when the next one starts. A model's vision projector comes with it, as
``mmproj-<model id>.gguf`` (``pairing``), verified the same way and brought in first, so
the model never shows without it; a damaged projector refuses the model.
"""

from __future__ import annotations

from collections.abc import Iterator

from offgrid.atomic_files import (
    NO_PROGRESS,
    Progress,
    clean_partials,
    copy_hashed,
    damaged,
    hash_file,
)
from offgrid.errors import BadRequestError, IntegrityError, OffGridError
from offgrid.models.bundle import safe_file_name
from offgrid.models.gguf_meta import read_gguf_info
from offgrid.models.pairing import projector_name
from offgrid.models.registry import ModelInfo, Registry, Report, split_name
from offgrid.models.sources import Candidate, Found

__all__ = ["import_found"]


def import_found(
    registry: Registry,
    found: Found,
    *,
    link: bool = False,
    name: str | None = None,
    progress: Progress = NO_PROGRESS,
) -> Iterator[Report]:
    """Import each candidate of ``found``, yielding its outcome as it is decided.

    A full disk stops the import (StorageError); other problems refuse one file and go on.
    """
    renamed = f"{name.removesuffix('.gguf')}.gguf" if name is not None else None
    if renamed is not None:
        if len(found.candidates) != 1:
            raise BadRequestError("--name needs a source that holds exactly one model")
        safe_file_name(renamed, "--name")
    registry.models_dir.mkdir(parents=True, exist_ok=True)
    clean_partials(registry.models_dir)
    for path, why in found.refused:
        yield Report(path.stem, path, "refused", why)
    for cand in found.candidates:
        file_name = renamed or cand.name
        model_id = file_name[:-5]
        try:
            yield _import_one(registry, cand, file_name, model_id, link, progress)
        except (BadRequestError, IntegrityError) as exc:
            yield Report(model_id, cand.path, "refused", exc.message)


def _import_one(
    registry: Registry,
    cand: Candidate,
    file_name: str,
    model_id: str,
    link: bool,
    progress: Progress,
) -> Report:
    if read_gguf_info(cand.path).projector:  # a whole, readable GGUF model, or a clear refusal
        raise BadRequestError(f"{cand.path.name} is a vision projector (mmproj), not a model")
    listed = registry.list()
    expected, size = cand.expected, cand.path.stat().st_size
    hashed = expected is None and any(m.size - m.projector_size == size for m in listed)
    if hashed:
        expected = hash_file(cand.path, progress)  # a likely duplicate: hash it before copying
    if expected is not None and (dup := _installed(registry, listed, expected, size)):
        return Report(dup, cand.path, "skipped", f"already installed as {dup}")
    clash = next((m for m in listed if m.id == model_id), None)
    if clash is not None:
        return Report(
            model_id,
            cand.path,
            "refused",
            f"a different model named {model_id} is installed ({clash.path}); import this one "
            "under another name with --name, or remove the other first",
        )
    proj = cand.projector
    note = " (with its projector)" if proj is not None else ""
    if link:
        digest = expected if hashed and expected else hash_file(cand.path, progress)
        if expected is not None and digest != expected:
            raise damaged(cand.path, digest, expected, cand.expected_from or "its source")
        linked = [(cand, digest)] + ([(proj, _checked_hash(proj, progress))] if proj else [])
        for file, file_digest in linked:  # under one id: the scan pairs them by it
            origin = {**file.origin, "reference": True}
            registry.record(file.path, file_digest, origin=origin, model_id=model_id)
        return Report(model_id, cand.path, "linked", _vouched(cand) + note)
    if proj is not None:
        split = split_name(file_name)
        _copy_projector(registry, proj, projector_name(split[0] if split else model_id), progress)
    dest = registry.models_dir / file_name
    try:
        digest = copy_hashed(
            cand.path, dest, expected=expected, expected_from=cand.expected_from, progress=progress
        )
    except FileExistsError:
        return Report(
            model_id,
            cand.path,
            "refused",
            f"{dest} already exists (not a readable model); move it away or use --name",
        )
    registry.record(dest, digest, origin=cand.origin)
    return Report(model_id, cand.path, "imported", _vouched(cand) + note)


def _checked_hash(cand: Candidate, progress: Progress) -> str:
    """The sha256 of a projector to link, once it is sure to be a whole, undamaged one."""
    read_gguf_info(cand.path)
    digest = hash_file(cand.path, progress)
    if cand.expected is not None and digest != cand.expected:
        raise damaged(cand.path, digest, cand.expected, cand.expected_from or "its source")
    return digest


def _copy_projector(
    registry: Registry, cand: Candidate, file_name: str, progress: Progress
) -> None:
    """Copy a projector in as ``file_name``, verified; one already there is kept if it is
    the same file."""
    read_gguf_info(cand.path)
    dest = registry.models_dir / file_name
    try:
        digest = copy_hashed(
            cand.path,
            dest,
            expected=cand.expected,
            expected_from=cand.expected_from,
            progress=progress,
        )
    except FileExistsError:
        if registry.file_hash(dest) != (cand.expected or hash_file(cand.path, progress)):
            raise BadRequestError(
                f"{dest} already exists and is another projector; move it away or use --name"
            ) from None
        return
    registry.record(dest, digest, origin=cand.origin)


def _installed(registry: Registry, listed: list[ModelInfo], sha256: str, size: int) -> str | None:
    """The id of an installed model with this hash (hashing same-size models as needed)."""
    for m in listed:
        if m.sha256 == sha256:
            return m.id
    for m in listed:
        if m.sha256 is None and m.size - m.projector_size == size:
            try:
                if registry.hash_of(m) == sha256:
                    return m.id
            except OffGridError:
                continue
    return None


def _vouched(cand: Candidate) -> str:
    return f"sha256 checked against {cand.expected_from}" if cand.expected else "sha256 recorded"
