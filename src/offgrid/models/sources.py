"""What an import source holds: the GGUF files to take, and the hash each must have.

A source is a GGUF file, a folder (searched recursively: a USB stick, an LM Studio models
folder), an OffGrid bundle, an Ollama model store or one of its models by name
(``llama3.2:1b``), or a HuggingFace cache. The shortcuts ``ollama``, ``hf-cache`` and
``lmstudio`` name those tools' usual folders. Hashes come from what vouches for a file:
a bundle manifest, an Ollama manifest digest, a HuggingFace blob name, a ``SHA256SUMS``
or a ``<file>.sha256`` beside it.

A model's vision projector (mmproj file) comes along with it: the one beside it in its
folder (``pairing``), the projector layer of an Ollama model, or the one a bundle lists.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from offgrid.atomic_files import SHA256_HEX
from offgrid.errors import BadRequestError, OffGridError
from offgrid.models.bundle import find_manifest, read_bundle, safe_file_name
from offgrid.models.gguf_meta import read_gguf_info
from offgrid.models.keys import Keys
from offgrid.models.pairing import pair, projector_name, projector_named
from offgrid.models.scan import split_name

__all__ = ["Candidate", "Found", "find_candidates"]

_NAME_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_OLLAMA_MODEL = "application/vnd.ollama.image.model"
_OLLAMA_PROJECTOR = "application/vnd.ollama.image.projector"
_OLLAMA_HOST = "registry.ollama.ai"
_REVISION = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class Candidate:
    """One file to import."""

    path: Path
    name: str  # its file name in the models folder
    origin: Mapping[str, Any]
    expected: str | None = None  # the sha256 it must have
    expected_from: str = ""  # what vouches for that hash
    projector: Candidate | None = None  # the model's vision projector, imported with it


@dataclass
class Found:
    """What a source holds."""

    candidates: list[Candidate] = field(default_factory=list)
    passed_over: list[Path] = field(default_factory=list)  # files that are not .gguf
    refused: list[tuple[Path, str]] = field(default_factory=list)  # entries that are unsafe
    note: str = ""  # e.g. how a bundle is signed


def _default_folders(env: Mapping[str, str]) -> dict[str, list[Path]]:
    home = Path(env.get("HOME") or Path.home())
    hf_home = Path(env.get("HF_HOME") or home / ".cache" / "huggingface")
    return {
        "ollama": [
            Path(env["OLLAMA_MODELS"]) if env.get("OLLAMA_MODELS") else home / ".ollama/models",
            Path("/usr/share/ollama/.ollama/models"),
        ],
        "hf-cache": [Path(env.get("HF_HUB_CACHE") or hf_home / "hub")],
        "lmstudio": [home / ".lmstudio/models", home / ".cache/lm-studio/models"],
    }


def find_candidates(
    source: str,
    keys: Keys,
    *,
    allow_untrusted: bool = False,
    ollama_dir: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> Found:
    """The files ``source`` holds, with their expected hashes; BadRequestError if it
    holds nothing importable or cannot be read."""
    env = os.environ if env is None else env
    path = Path(os.path.expanduser(source))
    defaults = _default_folders(env)
    if not path.exists() and source in defaults:
        path = next((p for p in defaults[source] if p.is_dir()), defaults[source][0])
        if not path.is_dir():
            raise BadRequestError(f"No {source} folder found (looked in {path})")
    if path.is_file():
        if _is_projector(path):
            raise BadRequestError(
                f"{path.name} is a vision projector (mmproj), not a model: import the model "
                "file beside it, and its projector comes along."
            )
        siblings = sorted(p for p in path.parent.glob("*.gguf") if not p.name.startswith("."))
        _, paired, _ = _pairs(siblings)
        return Found([_plain(path, "file", paired.get(path))])
    if path.is_dir():
        if (manifest := find_manifest(path)) is not None:
            entries, note = read_bundle(manifest, keys, allow_untrusted=allow_untrusted)
            origin = {"kind": "bundle", "source": str(manifest.parent), "signature": note}
            vouch = "the bundle manifest"
            found = [
                Candidate(
                    e.path,
                    f"{e.model_id}.gguf",
                    origin,
                    e.sha256,
                    vouch,
                    None
                    if e.projector is None
                    else Candidate(
                        e.projector[0], projector_name(e.model_id), origin, e.projector[1], vouch
                    ),
                )
                for e in entries
            ]
            return Found(found, note=note)
        if (path / "manifests").is_dir() and (path / "blobs").is_dir():
            return _nonempty(_ollama_store(path), path)
        if path.name.startswith("models--") or any(path.glob("models--*/snapshots")):
            repos = [path] if path.name.startswith("models--") else sorted(path.glob("models--*"))
            cache = Found()
            for repo in repos:
                _hf_repo(repo, cache)
            return _nonempty(cache, path)
        return _nonempty(_walk(path), path)
    if ":" in source or _NAME_PART.match(source):
        store = ollama_dir or next((p for p in defaults["ollama"] if p.is_dir()), None)
        if store is not None:
            return Found([_ollama_model(store, source)])
    raise BadRequestError(
        f"'{source}' is not a file or folder, nor an Ollama model in a store found here. "
        "Give a .gguf file, a folder, a bundle, or a model name with --ollama-dir."
    )


def _nonempty(found: Found, source: Path) -> Found:
    if not found.candidates and not found.refused:
        raise BadRequestError(f"{source} holds no .gguf model files")
    return found


def _plain(path: Path, kind: str, projector: Path | None = None) -> Candidate:
    """A file found on disk (and its projector), vouched for by a sidecar hash or
    SHA256SUMS when present."""
    expected, expected_from = _sidecar_hash(path)
    name = path.name if path.name.endswith(".gguf") else f"{path.name}.gguf"
    return Candidate(
        path,
        name,
        {"kind": kind, "source": str(path)},
        expected,
        expected_from,
        None
        if projector is None
        else replace(_plain(projector, kind), name=projector_name(_model_id(name))),
    )


def _model_id(file_name: str) -> str:
    """The id the registry gives a model file (a split model's: the name of its parts)."""
    split = split_name(file_name)
    return split[0] if split else file_name.removesuffix(".gguf")


def _is_projector(path: Path) -> bool:
    """Whether a file is a vision projector, as the scan tells: by its name or its header."""
    try:
        return projector_named(path.name) or read_gguf_info(path).projector
    except OffGridError:
        return False


def _pairs(
    paths: Sequence[Path], *, one_model: bool = False
) -> tuple[list[Path], dict[Path, Path], list[Path]]:
    """Of the GGUF files of one folder (``one_model``: a repository's): the models, the
    projector of each model that has one (given to a split model's first part), and the
    projectors no model takes."""
    projectors = [p for p in paths if _is_projector(p)]
    models = [p for p in paths if p not in projectors]
    firsts = {_model_id(p.name): p for p in models if (split_name(p.name) or ("", 1))[1] == 1}
    by_name = {p.name: p for p in projectors}
    pairs = pair(list(firsts), list(by_name), one_model=one_model)
    paired = {firsts[i]: by_name[n] for i, n in pairs.items()}
    taken = set(paired.values())
    return models, paired, [p for p in projectors if p not in taken]


def _sidecar_hash(path: Path) -> tuple[str | None, str]:
    sidecar = path.with_name(path.name + ".sha256")
    for sums in (sidecar, path.with_name("SHA256SUMS")):
        try:
            lines = sums.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            digest, _, name = line.strip().partition(" ")
            name = name.strip().lstrip("*")
            if SHA256_HEX.match(digest) and (name == path.name or (not name and sums == sidecar)):
                return digest.lower(), str(sums)
    return None, ""


def _walk(folder: Path) -> Found:
    """Every .gguf below ``folder`` (hidden folders skipped), LM Studio's layout included."""
    found = Found()
    kind = "lmstudio" if {"lm-studio", ".lmstudio"} & set(folder.parts) else "folder"
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        ggufs = []
        for name in sorted(files):
            path = Path(root) / name
            if name.startswith("."):
                continue
            if name.endswith(".gguf"):
                ggufs.append(path)
            else:
                found.passed_over.append(path)
        models, paired, unused = _pairs(ggufs, one_model=kind == "lmstudio")
        found.candidates += [_plain(path, kind, paired.get(path)) for path in models]
        found.passed_over += unused
    return found


def _ollama_store(store: Path) -> Found:
    """Every model of an Ollama store, by the names its manifests give; a manifest that
    cannot be used is refused alone."""
    found = Found()
    root = store / "manifests"
    for manifest in sorted(p for p in root.rglob("*") if p.is_file()):
        parts = manifest.relative_to(root).parts  # host / namespace / model / tag
        if len(parts) != 4:
            continue
        host, ns, model, tag = parts
        prefix = "" if ns == "library" else f"{ns}/"
        if host != _OLLAMA_HOST:
            prefix = f"{host}/{ns}/"
        try:
            found.candidates.append(_ollama_model(store, f"{prefix}{model}:{tag}"))
        except BadRequestError as exc:
            found.refused.append((manifest, exc.message))
    return found


def _ollama_model(store: Path, name: str) -> Candidate:
    """The GGUF blob an Ollama model name points to, vouched for by its digest."""
    ref, _, tag = name.partition(":")
    parts = ref.split("/")
    host, ns = _OLLAMA_HOST, "library"
    if len(parts) == 2:
        ns = parts[0]
    elif len(parts) >= 3:
        host, ns = parts[-3], parts[-2]
    model, tag = parts[-1], tag or "latest"
    if not all(_NAME_PART.match(p) for p in (host, ns, model, tag)):
        raise BadRequestError(f"'{name}' is not an Ollama model name like llama3.2:1b")
    manifest = store / "manifests" / host / ns / model / tag
    try:
        layers = json.loads(manifest.read_text(encoding="utf-8"))["layers"]
        digests = {x.get("mediaType"): x["digest"] for x in layers}
    except FileNotFoundError:
        raise BadRequestError(f"No Ollama model '{name}' in {store}") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise BadRequestError(f"{manifest} is not a readable Ollama manifest: {exc}") from exc
    if _OLLAMA_MODEL not in digests:
        raise BadRequestError(f"{manifest} is not a readable Ollama manifest: no model layer")
    model_id = model if tag == "latest" else f"{model}-{tag}"
    origin = {"kind": "ollama", "name": f"{ref}:{tag}", "source": str(store)}
    vouch = "the Ollama manifest"
    blob, sha = _ollama_blob(store, manifest, digests[_OLLAMA_MODEL])
    projector = None
    if _OLLAMA_PROJECTOR in digests:
        p_blob, p_sha = _ollama_blob(store, manifest, digests[_OLLAMA_PROJECTOR])
        projector = Candidate(p_blob, projector_name(model_id), origin, p_sha, vouch)
    name = safe_file_name(f"{model_id}.gguf", str(manifest))
    return Candidate(blob, name, origin, sha, vouch, projector)


def _ollama_blob(store: Path, manifest: Path, digest: object) -> tuple[Path, str]:
    """The blob a layer's digest names, and its sha256."""
    algo, _, hex_digest = str(digest).partition(":")
    if algo != "sha256" or not SHA256_HEX.match(hex_digest):
        raise BadRequestError(f"{manifest} gives a layer an unknown digest {digest!r}")
    return store / "blobs" / f"sha256-{hex_digest}", hex_digest.lower()


def _hf_repo(repo: Path, found: Found) -> None:
    """The GGUF files of one repository in a HuggingFace cache (its ``main`` revision when
    known). The cache names each blob by its sha256, which vouches for it; a link that
    leads out of the repository's folder is refused."""
    repo_name = repo.name.removeprefix("models--").replace("--", "/")
    snapshots = repo / "snapshots"
    ref = repo / "refs" / "main"
    main = ref.read_text().strip() if ref.is_file() else ""
    folders = [snapshots / main] if _REVISION.match(main) and (snapshots / main).is_dir() else []
    for snap in folders or sorted(p for p in snapshots.glob("*") if p.is_dir()):
        by_folder: dict[Path, list[Path]] = {}
        for path in sorted(snap.rglob("*.gguf")):
            blob = path.resolve()
            if not blob.is_relative_to(repo.resolve()) or not blob.is_file():
                found.refused.append((path, f"{path} points outside its cache folder"))
                continue
            by_folder.setdefault(path.parent, []).append(path)
        for paths in by_folder.values():
            models, paired, unused = _pairs(paths, one_model=True)
            for path in models:
                projector = paired.get(path)
                cand = _hf_file(repo_name, snap, path, path.name)
                if projector is not None:
                    name = projector_name(_model_id(path.name))
                    cand = replace(cand, projector=_hf_file(repo_name, snap, projector, name))
                found.candidates.append(cand)
            found.passed_over += unused


def _hf_file(repo_name: str, snap: Path, path: Path, name: str) -> Candidate:
    """A file of a HuggingFace cache snapshot, vouched for by its blob's name."""
    blob = path.resolve()
    origin = {
        "kind": "hf-cache",
        "repo": repo_name,
        "revision": snap.name,
        "file": str(path.relative_to(snap)),
    }
    expected = blob.name.lower() if SHA256_HEX.match(blob.name) else None
    vouch = "the HuggingFace cache" if expected else ""
    return Candidate(blob, name, origin, expected, vouch)
