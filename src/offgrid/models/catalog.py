"""The model catalog: models picked for boxes like these, by name instead of by repo path.

It ships with the package (``catalog.json``): for each model its Hub repo and file(s) per
quantization, with their sizes and sha256, its licence, context, kind and what it is good
for. A newer catalog can be installed offline from a file (``offgrid catalog --update
FILE``, e.g. from a USB stick): it is checked whole and written atomically to the data
folder, where it takes precedence over the shipped one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from offgrid.atomic_files import SHA256_HEX, atomic_writer
from offgrid.errors import BadRequestError, NotFoundError
from offgrid.placement import rough_need
from offgrid.resources import SystemFacts, machine_fits

__all__ = ["CatalogEntry", "CatalogFile", "CatalogQuant", "find", "load", "update"]

SHIPPED = Path(__file__).with_name("catalog.json")


@dataclass(frozen=True)
class CatalogFile:
    name: str  # path inside the repo
    size: int
    sha256: str


@dataclass(frozen=True)
class CatalogQuant:
    """One quantization of a catalog model: a file, or the parts of a split one."""

    name: str
    repo: str
    files: tuple[CatalogFile, ...]

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def ram_needed(self) -> int:
        return rough_need(self.size)


@dataclass(frozen=True)
class CatalogEntry:
    id: str
    name: str
    parameters: str
    license: str
    context_length: int
    kind: str  # "chat" or "embedding"
    good_for: str
    default_quant: str
    quants: tuple[CatalogQuant, ...]

    def quant(self, name: str | None = None) -> CatalogQuant:
        """The quantization ``name`` (default: the entry's), or NotFoundError listing them."""
        wanted = (name or self.default_quant).upper()
        for q in self.quants:
            if q.name.upper() == wanted:
                return q
        have = ", ".join(q.name for q in self.quants)
        raise NotFoundError(f"The catalog has {self.id} in {have}, not in {wanted}.")

    def as_dict(self, facts: SystemFacts) -> dict[str, Any]:
        """The entry as ``/api/catalog`` and ``--json`` give it: each quantization with the
        memory it needs and whether that fits this machine (``facts``)."""
        return {
            "id": self.id,
            "name": self.name,
            "parameters": self.parameters,
            "license": self.license,
            "context_length": self.context_length,
            "kind": self.kind,
            "good_for": self.good_for,
            "default_quant": self.default_quant,
            "quants": [
                {
                    "quant": q.name,
                    "repo": q.repo,
                    "size": q.size,
                    "ram_needed": q.ram_needed,
                    "fits": machine_fits(q.ram_needed, facts),
                    "files": [vars(f) for f in q.files],
                }
                for q in self.quants
            ],
        }


def load(data_dir: Path) -> list[CatalogEntry]:
    """The installed catalog: the data folder's if one was installed, else the shipped one."""
    installed = data_dir / "catalog.json"
    source = installed if installed.exists() else SHIPPED
    return _parse(source.read_text(encoding="utf-8"), source)


def find(entries: list[CatalogEntry], model_id: str) -> CatalogEntry:
    for entry in entries:
        if entry.id == model_id.lower():
            return entry
    raise NotFoundError(
        f"The catalog has no '{model_id}'. Its models: {', '.join(e.id for e in entries)}. "
        "For any Hub repository use `offgrid download-hf`."
    )


def update(data_dir: Path, source: Path) -> list[CatalogEntry]:
    """Install the catalog in ``source`` after checking it whole; returns its entries."""
    try:
        text = source.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BadRequestError(f"Cannot read the catalog {source}: {exc}") from exc
    entries = _parse(text, source)
    with atomic_writer(data_dir / "catalog.json") as out:
        out.write(text.encode())
    return entries


def _parse(text: str, source: Path) -> list[CatalogEntry]:
    """The entries of a catalog document; BadRequestError naming what is wrong."""
    try:
        doc = json.loads(text)
        if doc.get("format") != "offgrid-catalog":
            raise ValueError('"format" is not "offgrid-catalog"')
        entries = [_entry(m) for m in doc["models"]]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise BadRequestError(f"{source} is not a valid OffGrid catalog: {exc!r}") from exc
    ids = [e.id for e in entries]
    if len(set(ids)) != len(ids):
        raise BadRequestError(f"{source} is not a valid OffGrid catalog: an id appears twice")
    return entries


def _entry(m: dict[str, Any]) -> CatalogEntry:
    quants = tuple(
        CatalogQuant(
            str(name),
            str(q["repo"]),
            tuple(_file(f) for f in q["files"]),
        )
        for name, q in m["quants"].items()
    )
    if not quants or any(not q.files for q in quants):
        raise ValueError(f"{m['id']} has no files")
    entry = CatalogEntry(
        id=str(m["id"]).lower(),
        name=str(m["name"]),
        parameters=str(m["parameters"]),
        license=str(m["license"]),
        context_length=int(m["context_length"]),
        kind=str(m["kind"]),
        good_for=str(m["good_for"]),
        default_quant=str(m["default_quant"]),
        quants=quants,
    )
    entry.quant()  # the default must be one of them
    return entry


def _file(f: dict[str, Any]) -> CatalogFile:
    name, size, sha = str(f["name"]), int(f["size"]), str(f["sha256"])
    if not name.endswith(".gguf") or size <= 0 or not SHA256_HEX.match(sha):
        raise ValueError(f"bad file entry {f!r}")
    return CatalogFile(name, size, sha.lower())
