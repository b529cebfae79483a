"""Asking the HuggingFace Hub what it has: GGUF repositories, their files, sizes and hashes.

The calls go through ``huggingface_hub`` (its session, headers, token lookup and errors),
to ``HF_ENDPOINT`` when set (a mirror, or the tests' local hub), through the usual proxy
variables. Each call is one request with a deadline, not the library's paginated search
with its five silent retries, so a box with no network hears so at once, in one line.
A token for gated repositories comes from where ``huggingface_hub`` keeps it (``HF_TOKEN``,
``hf auth login``) and is never printed.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

from offgrid.errors import BadRequestError, IntegrityError, NotFoundError, UnreachableError
from offgrid.models.pairing import pair, projector_named
from offgrid.models.quantization import quant_of
from offgrid.models.registry import split_name
from offgrid.placement import rough_need
from offgrid.resources import SystemFacts, machine_fits

if TYPE_CHECKING:
    from offgrid.models.catalog import CatalogQuant

__all__ = [
    "SORTS",
    "HubFile",
    "RemoteModel",
    "RepoHit",
    "auth_headers",
    "endpoint",
    "file_url",
    "from_catalog",
    "hub_errors",
    "pick",
    "repo_models",
    "search",
]

DEFAULT_ENDPOINT = "https://huggingface.co"
SORTS = {"downloads": "downloads", "likes": "likes", "updated": "lastModified"}
Sort = Literal["downloads", "likes", "updated"]
TIMEOUT = (10.0, 60.0)  # connect, read: seconds


@dataclass(frozen=True)
class HubFile:
    """One file of a repository, as the Hub vouches for it."""

    name: str  # path inside the repo
    size: int
    sha256: str  # the LFS object id: the sha256 of the whole file

    @property
    def base_name(self) -> str:
        return self.name.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class RemoteModel:
    """A model a repository offers: one GGUF file, or the parts of a split one, and the
    vision projector (mmproj file) that comes with it (``models.pairing``)."""

    repo: str
    revision: str  # the commit the sizes and hashes belong to
    files: tuple[HubFile, ...]
    projector: HubFile | None = None

    @property
    def downloads(self) -> tuple[HubFile, ...]:
        """Every file to fetch, the projector first: the model is whole once it arrives."""
        return (*((self.projector,) if self.projector else ()), *self.files)

    @property
    def model_id(self) -> str:
        """The id it gets once downloaded: the file name without ``.gguf`` (nor the split
        suffix)."""
        split = split_name(self.files[0].base_name)
        return split[0] if split else self.files[0].base_name.removesuffix(".gguf")

    @property
    def quant(self) -> str | None:
        return quant_of(self.files[0].name)

    @property
    def size(self) -> int:
        return sum(f.size for f in self.downloads)

    def as_dict(self) -> dict[str, Any]:
        return {
            "repo": self.repo,
            "revision": self.revision,
            "model_id": self.model_id,
            "quantization": self.quant,
            "size": self.size,
            "ram_needed": rough_need(self.size),
            "files": [{"name": f.name, "size": f.size, "sha256": f.sha256} for f in self.files],
            "projector": self.projector.name if self.projector else None,
            "vision": self.projector is not None,
        }


@dataclass(frozen=True)
class RepoHit:
    """A repository a search found, with the GGUF models it offers."""

    repo: str
    downloads: int
    likes: int
    updated: str
    models: tuple[RemoteModel, ...]

    def as_dict(self, facts: SystemFacts) -> dict[str, Any]:
        """The hit as ``/api/hub/search`` and ``--json`` give it: each model with the memory
        it needs and whether that fits this machine (``facts``)."""
        models = [m.as_dict() for m in self.models]
        for m in models:
            m["fits"] = machine_fits(m["ram_needed"], facts)
        return {
            "repo": self.repo,
            "downloads": self.downloads,
            "likes": self.likes,
            "updated": self.updated,
            "models": models,
        }


def endpoint() -> str:
    """Where the Hub is: ``HF_ENDPOINT`` (read at each call, not at import) or huggingface.co."""
    return os.environ.get("HF_ENDPOINT", DEFAULT_ENDPOINT).rstrip("/")


def auth_headers() -> dict[str, str]:
    """The headers ``huggingface_hub`` sends: its user agent and the token, if one is set."""
    from huggingface_hub.utils._headers import build_hf_headers

    return dict(build_hf_headers(library_name="offgrid"))


def file_url(repo: str, revision: str, name: str) -> str:
    from urllib.parse import quote

    return f"{endpoint()}/{repo}/resolve/{quote(revision, safe='')}/{quote(name)}"


@contextlib.contextmanager
def hub_errors(what: str) -> Iterator[None]:
    """Turn what ``huggingface_hub`` and the network raise into OffGrid's errors, in one line."""
    import httpx2
    from huggingface_hub import errors as hf

    try:
        yield
    except hf.OfflineModeIsEnabled as exc:
        raise UnreachableError(
            f"Cannot {what}: HF_HUB_OFFLINE is set. Unset it to reach the HuggingFace Hub."
        ) from exc
    except hf.GatedRepoError as exc:
        raise BadRequestError(
            f"Cannot {what}: the repository is gated. Accept its terms on the Hub, then give "
            "OffGrid a token: set HF_TOKEN or run `hf auth login`."
        ) from exc
    except hf.RepositoryNotFoundError as exc:
        raise NotFoundError(
            f"Cannot {what}: no such repository on the Hub (or it is private: set HF_TOKEN)."
        ) from exc
    except hf.HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "?"
        raise UnreachableError(f"Cannot {what}: the Hub answered HTTP {status}.") from exc
    except (KeyError, ValueError, TypeError) as exc:  # JSON not shaped as the Hub's
        raise UnreachableError(
            f"Cannot {what}: the answer from {endpoint()} is not the Hub's ({exc!r})."
        ) from exc
    except httpx2.InvalidURL as exc:  # what the request names cannot be put in a URL
        raise BadRequestError(f"Cannot {what}: {exc}.") from exc
    except (httpx2.TransportError, OSError) as exc:
        raise UnreachableError(
            f"Cannot {what}: the HuggingFace Hub at {endpoint()} cannot be reached "
            f"({type(exc).__name__}). Is this box online? Everything else works offline."
        ) from exc


def _get(path: str, params: dict[str, Any] | list[tuple[str, Any]]) -> Any:
    """One GET of the Hub's API, its JSON answer, errors raised as ``huggingface_hub`` does."""
    from huggingface_hub import get_session, hf_raise_for_status

    resp = get_session().get(
        f"{endpoint()}{path}", params=params, headers=auth_headers(), timeout=TIMEOUT[1]
    )
    hf_raise_for_status(resp)
    return resp.json()


# The Hub's rule for a repository id: owner/name, letters, digits, "-", "_", "." (no "--"
# or ".." in it), at most 96 characters
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def check_repo_id(repo: str) -> str:
    """``repo`` if it is a repository id the Hub could have; BadRequestError otherwise
    (before anything is sent: a name is never a path on the Hub's server)."""
    if len(repo) > 96 or not _REPO_ID.fullmatch(repo) or ".." in repo or "--" in repo:
        raise BadRequestError(
            f"{repo[:100]!r} is not a Hub repository id: write it as owner/name "
            "(letters, digits, '-', '_', '.'), e.g. bartowski/SmolLM2-360M-Instruct-GGUF.",
            param="repo",
        )
    return repo


def _info(repo: str, revision: str | None = None) -> dict[str, Any]:
    """The Hub's model info of ``repo``, with each file's size and LFS sha256. Read as JSON:
    ``huggingface_hub.ModelInfo`` would add 190 ms of imports to every command using it."""
    from urllib.parse import quote

    check_repo_id(repo)
    path = f"/api/models/{repo}" + (f"/revision/{quote(revision, safe='')}" if revision else "")
    info: dict[str, Any] = _get(path, {"blobs": True})
    return info


def _info_or_none(repo: str) -> dict[str, Any] | None:
    """A search hit's details, or None when the Hub will not give them (it is skipped)."""
    from huggingface_hub.errors import HfHubHTTPError

    try:
        return _info(repo)
    except HfHubHTTPError:
        return None


def repo_models(repo: str, revision: str | None = None) -> list[RemoteModel]:
    """The GGUF models of ``repo`` at ``revision`` (default: its main branch), split parts
    grouped; each file with its size and sha256."""
    with hub_errors(f"read {repo} on the Hub"):
        return _models_of(_info(repo, revision))


def _models_of(info: dict[str, Any]) -> list[RemoteModel]:
    """The models of a repository's file list, each with the projector of its folder that
    pairs with it (a repository holds one model: a lone projector serves each)."""
    files: dict[str, list[HubFile]] = {}
    projectors: dict[str, dict[str, HubFile]] = {}  # by folder, then file name
    for sib in info.get("siblings") or ():
        name, lfs = str(sib.get("rfilename", "")), sib.get("lfs")
        if not name.endswith(".gguf") or not lfs:
            continue
        hub_file = HubFile(name, int(lfs["size"]), str(lfs["sha256"]))
        folder = name.rsplit("/", 1)[0] if "/" in name else ""
        if projector_named(hub_file.base_name):
            projectors.setdefault(folder, {})[hub_file.base_name] = hub_file
            continue
        split = split_name(hub_file.base_name)
        key = folder + "/" + split[0] if split else name
        files.setdefault(key, []).append(hub_file)
    models = []
    for parts in files.values():
        parts.sort(key=lambda f: f.name)
        split = split_name(parts[0].base_name)
        if split and (split[1] != 1 or len(parts) != split[2]):
            continue  # an incomplete split set cannot be loaded
        models.append(RemoteModel(info["id"], info.get("sha") or "main", tuple(parts)))
    return sorted((_with_projector(m, projectors) for m in models), key=lambda m: m.files[0].name)


def _with_projector(model: RemoteModel, projectors: dict[str, dict[str, HubFile]]) -> RemoteModel:
    name = model.files[0].name
    beside = projectors.get(name.rsplit("/", 1)[0] if "/" in name else "", {})
    chosen = pair([model.model_id], list(beside), one_model=True).get(model.model_id)
    return replace(model, projector=beside[chosen]) if chosen else model


def search(
    query: str, *, quant: str | None = None, sort: Sort = "downloads", limit: int = 10
) -> list[RepoHit]:
    """GGUF repositories matching ``query``, best first by ``sort``, each with its models
    (only those at ``quant``, when given; repositories left with none are dropped)."""
    if sort not in SORTS:
        raise BadRequestError(f"Sort by one of {', '.join(SORTS)}, not {sort!r}.")
    params = [("search", query), ("filter", "gguf"), ("sort", SORTS[sort]), ("limit", limit)]
    with hub_errors("search the Hub"):
        repos = [str(item["id"]) for item in _get("/api/models", params)]
        with ThreadPoolExecutor(8) as pool:
            infos = list(pool.map(_info_or_none, repos))
    hits = []
    for info in filter(None, infos):
        models = [m for m in _models_of(info) if quant is None or _same(m.quant, quant)]
        if models:
            updated = str(info.get("lastModified") or "")[:10]
            hits.append(
                RepoHit(
                    info["id"],
                    int(info.get("downloads") or 0),
                    int(info.get("likes") or 0),
                    updated,
                    tuple(models),
                )
            )
    return hits


def _same(found: str | None, wanted: str) -> bool:
    return found is not None and found.upper() == wanted.upper()


def pick(
    models: Sequence[RemoteModel], repo: str, file: str | None, quant: str | None
) -> RemoteModel:
    """The model a download names: by ``file`` (any part of a split set names the set), by
    ``quant``, or the repo's only model; BadRequestError listing the choices otherwise."""
    if file is not None:
        chosen = [m for m in models if any(file in (f.name, f.base_name) for f in m.files)]
    elif quant is not None:
        chosen = [m for m in models if _same(m.quant, quant)]
    else:
        chosen = list(models)
    if len(chosen) == 1:
        return chosen[0]
    names = ", ".join(m.files[0].name for m in models) or "none"
    if not chosen:
        wanted = f"file {file}" if file else f"quantization {quant}" if quant else "GGUF file"
        raise NotFoundError(f"{repo} has no {wanted}. Its GGUF files: {names}.")
    raise BadRequestError(
        f"{repo} has several GGUF files; choose one with --file or --quant: {names}."
    )


def from_catalog(quant: CatalogQuant) -> RemoteModel:
    """A catalog model's files as the Hub serves them now, checked against the catalog:
    IntegrityError if the Hub's size or sha256 differ (the repo changed since)."""
    models = repo_models(quant.repo)
    offered = {f.name: f for m in models for f in m.files}
    files = []
    for f in quant.files:
        hub_file = offered.get(f.name)
        if hub_file is None:
            raise NotFoundError(
                f"{quant.repo} no longer has {f.name}. Update the catalog "
                "(`offgrid catalog --update FILE`) or pick a file with `offgrid download-hf`."
            )
        if (hub_file.size, hub_file.sha256) != (f.size, f.sha256):
            raise IntegrityError(
                f"{quant.repo}/{f.name} on the Hub is not the file the catalog vouches for "
                f"(sha256 {hub_file.sha256[:16]}…, the catalog's {f.sha256[:16]}…): it was "
                "not downloaded. Update the catalog, or use `offgrid download-hf` to take it."
            )
        files.append(hub_file)
    projector = next((m.projector for m in models if m.files == tuple(files)), None)
    return RemoteModel(quant.repo, models[0].revision, tuple(files), projector)
