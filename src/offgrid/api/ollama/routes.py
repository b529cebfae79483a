"""Ollama's reading and managing routes: version, tags, show, ps, pull, delete, copy.

Shapes as Ollama's clients parse them (``ollama`` Python client, langchain-ollama, Open
WebUI); OffGrid's own fields ride along where they add something. Errors come out in
Ollama's ``{"error": "..."}`` shape (``api.errors`` maps these paths).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from offgrid import __version__
from offgrid.api.deps import RuntimeDep
from offgrid.errors import BadRequestError, ConflictError, NotFoundError
from offgrid.hub import client
from offgrid.models.aliases import load_aliases, save_aliases
from offgrid.models.registry import ModelInfo

__all__ = ["ollama_details", "router"]

router = APIRouter(prefix="/api")

OLLAMA_VERSION = "0.12.0"  # the Ollama API level these routes follow; clients check it


class ModelRequest(BaseModel):
    model: str | None = None
    name: str | None = None  # the older clients' field

    def target(self) -> str:
        name = self.model or self.name
        if not name:
            raise BadRequestError("'model' is required.", param="model")
        return name


class CopyRequest(BaseModel):
    source: str
    destination: str


class PullRequest(ModelRequest):
    stream: bool = True
    insecure: bool = False


def iso_time(seconds: float) -> str:
    """A Unix time as RFC 3339 in UTC, as Ollama writes its times."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def ollama_details(model: ModelInfo) -> dict[str, Any]:
    """Ollama's ``details`` of a model, from its GGUF metadata."""
    g = model.gguf
    size = g.parameters if g else 0
    return {
        "parent_model": "",
        "format": "gguf",
        "family": g.architecture if g else "",
        "families": [g.architecture] if g else [],
        "parameter_size": f"{size / 1e9:.1f}B" if size >= 1e9 else f"{size / 1e6:.0f}M",
        "quantization_level": g.quantization if g else "",
    }


def _tag(model: ModelInfo, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "model": name,
        "modified_at": iso_time(model.mtime),
        "size": model.size,
        "digest": model.sha256 or "",
        "details": ollama_details(model),
        "capabilities": model.capabilities,
    }


@router.get("/version")
async def version() -> dict[str, str]:
    """Ollama's API level, and OffGrid's own version."""
    return {"version": OLLAMA_VERSION, "offgrid": __version__}


@router.get("/tags")
async def tags(runtime: RuntimeDep) -> dict[str, Any]:
    """Installed models (and names made by copy) as Ollama lists them."""
    models = await asyncio.to_thread(runtime.registry.list)
    rows = [_tag(m, m.id) for m in models]
    by_id = {m.id: m for m in models}
    rows += [_tag(by_id[t], a) for a, t in runtime.aliases.items() if t in by_id]
    return {"models": rows}


@router.post("/show")
async def show(body: ModelRequest, runtime: RuntimeDep) -> dict[str, Any]:
    """One model: details, metadata, capabilities; OffGrid's fields under ``offgrid``."""
    model = await asyncio.to_thread(runtime.registry.get, runtime.resolve(body.target()))
    g = model.gguf
    info: dict[str, Any] = {"general.architecture": g.architecture if g else ""}
    if g:
        arch = g.architecture
        info |= {
            "general.parameter_count": g.parameters,
            f"{arch}.context_length": g.context_length,
            f"{arch}.embedding_length": g.embedding_length,
            f"{arch}.block_count": g.block_count,
        }
    return {
        "modelfile": f"FROM {model.path}\n",
        "parameters": "",
        "template": "",
        "details": ollama_details(model),
        "model_info": info,
        "capabilities": model.capabilities,
        "modified_at": iso_time(model.mtime),
        "offgrid": model.as_dict(),
    }


@router.delete("/delete")
async def delete(body: ModelRequest, runtime: RuntimeDep) -> Response:
    """Remove a name made by copy, or the model itself (unloaded first)."""
    name = body.target()
    path = runtime.settings.data_dir / "aliases.json"
    stored = load_aliases(path)
    if name in stored:
        del stored[name]
        save_aliases(path, stored)
        runtime.aliases.pop(name, None)
        return Response(status_code=200)
    target = runtime.resolve(name)
    await asyncio.to_thread(runtime.registry.get, target)  # 404 for an unknown model
    if target in runtime.scheduler.loaded():
        await runtime.scheduler.unload(target)
    await asyncio.to_thread(runtime.registry.remove, target)
    return Response(status_code=200)


@router.post("/copy")
async def copy(body: CopyRequest, runtime: RuntimeDep) -> Response:
    """Give a model another name (an alias: no file is copied)."""
    target = runtime.resolve(body.source)
    await asyncio.to_thread(runtime.registry.get, target)  # 404 for an unknown model
    name = body.destination.removesuffix(":latest")
    installed = await asyncio.to_thread(runtime.registry.list)
    if not name or name in {m.id for m in installed}:
        raise ConflictError(f"'{body.destination}' is already a model's name.")
    path = runtime.settings.data_dir / "aliases.json"
    stored = load_aliases(path) | {name: target}
    save_aliases(path, stored)
    runtime.aliases[name] = target
    return Response(status_code=200)


@router.post("/pull", response_model=None)
async def pull(body: PullRequest, runtime: RuntimeDep) -> StreamingResponse | dict[str, Any]:
    """Download ``owner/repo[:quant]`` (or ``hf.co/owner/repo[:quant]``) from the Hub, with
    Ollama's progress lines; the pull goes on if the client leaves."""
    name = body.target().removeprefix("hf.co/").removeprefix("huggingface.co/")
    repo, _, quant = name.partition(":")
    if repo.count("/") != 1:
        raise NotFoundError(
            f"pull model manifest: '{name}' is not a Hub repository (owner/repo[:quant])"
        )
    quant = "" if quant == "latest" else quant
    remote = await asyncio.to_thread(
        client.pick, await asyncio.to_thread(client.repo_models, repo), repo, None, quant or None
    )
    job = runtime.pulls.start(remote)

    async def lines() -> AsyncIterator[bytes]:
        yield json.dumps({"status": "pulling manifest"}).encode() + b"\n"
        async for state in runtime.pulls.watch(job):
            yield _progress(state) + b"\n"

    if body.stream:
        return StreamingResponse(lines(), media_type="application/x-ndjson")
    last: dict[str, Any] = {}
    async for state in runtime.pulls.watch(job):
        last = json.loads(_progress(state))
    if "error" in last:
        raise BadRequestError(str(last["error"]))
    return last


def _progress(state: dict[str, Any]) -> bytes:
    status = state["status"]
    if status in ("done", "present"):
        line: dict[str, Any] = {"status": "success"}
    elif status in ("failed", "cancelled"):
        line = {"error": state.get("message") or status}
    else:
        line = {
            "status": f"pulling {state['model_id']}",
            "digest": state["model_id"],
            "total": state["total"],
            "completed": state["completed"],
        }
    return json.dumps(line).encode()
