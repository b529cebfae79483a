"""What a node offers its peers: its models, each file with its size and recorded sha256,
signed with the node's key.

The hashes are those the registry recorded at import or first verification, not taken
again from the files: a file that rotted on the disk since is served as it is now and
refused by the peer that pulls it, as it should be. The puller checks the signature
against the public key of the certificate it pinned at pairing, so a manifest cannot be
altered on the way or made by another node; then each file against the manifest's hash
before it gets its final name (``hub.download``).
"""

from __future__ import annotations

import time
from typing import Any

from offgrid.errors import BadRequestError, IntegrityError, NotFoundError
from offgrid.hub.client import HubFile, RemoteModel
from offgrid.models.bundle import safe_file_name
from offgrid.models.keys import Keys, signature_key
from offgrid.models.registry import ModelInfo, Registry
from offgrid.p2p.identity import public_key_of

__all__ = ["build", "remote_model", "served_file"]

VERSION = 1


def _file(registry: Registry, path: Any) -> dict[str, Any]:
    return {"name": path.name, "size": path.stat().st_size, "sha256": registry.file_hash(path)}


def _entry(registry: Registry, model: ModelInfo) -> dict[str, Any]:
    parts = (model.path, *model.more_parts)
    return {
        "id": model.id,
        "kind": model.kind,
        "size": model.size,
        "files": [_file(registry, p) for p in parts],
        "projector": _file(registry, model.projector) if model.projector else None,
    }


def build(registry: Registry, keys: Keys, node: str) -> dict[str, Any]:
    """This node's signed manifest (hashes each file that has no recorded hash yet)."""
    models = [_entry(registry, m) for m in registry.list() if m.error is None]
    doc: dict[str, Any] = {"version": VERSION, "node": node, "created_at": time.time()}
    doc["models"] = models
    doc["signature"] = keys.sign(doc)
    return doc


def remote_model(manifest: dict[str, Any], peer_cert: str, peer: str, model_id: str) -> RemoteModel:
    """The model ``model_id`` of a peer's manifest, as a download: IntegrityError unless
    the peer's own key signed it, BadRequestError for a file name that could escape."""
    if signature_key(manifest, f"{peer}'s manifest") != public_key_of(peer_cert):
        raise IntegrityError(
            f"{peer}'s manifest is not signed by {peer}'s key: nothing was pulled."
        )
    for entry in manifest.get("models", []):
        if entry.get("id") == model_id:
            what = f"{peer}'s manifest"
            files = tuple(_hub_file(f, what) for f in entry["files"])
            projector = entry.get("projector")
            return RemoteModel(
                repo=f"peer:{peer}",
                revision=str(manifest.get("created_at", "")),
                files=files,
                projector=_hub_file(projector, what) if projector else None,
            )
    offered = ", ".join(str(e.get("id")) for e in manifest.get("models", [])) or "none"
    raise NotFoundError(f"{peer} has no model {model_id!r} (it offers: {offered}).")


def _hub_file(item: Any, what: str) -> HubFile:
    if not isinstance(item, dict):
        raise BadRequestError(f"{what} lists a file that is not an object")
    name = safe_file_name(item.get("name"), what)
    sha, size = str(item.get("sha256", "")).lower(), item.get("size")
    if len(sha) != 64 or not isinstance(size, int) or size < 0:
        raise BadRequestError(f"{what} gives {name} no valid size and sha256")
    return HubFile(name, size, sha)


def served_file(registry: Registry, model_id: str, name: str) -> Any:
    """The path of one file of one model, for a peer that asks for it by name."""
    model = registry.get(model_id)
    for path in model.files:
        if path.name == name:
            return path
    raise NotFoundError(f"{model_id} has no file {name!r}.")
