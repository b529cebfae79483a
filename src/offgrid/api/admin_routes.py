"""Admin routes for the CLI and the dashboard, under ``/api``."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from offgrid.api.deps import RuntimeDep
from offgrid.api.fields import Duration
from offgrid.api.ollama.routes import iso_time, ollama_details
from offgrid.errors import ConflictError
from offgrid.models.import_jobs import ImportOrder

__all__ = ["router"]

router = APIRouter(prefix="/api")


class LoadRequest(BaseModel):
    keep_alive: Duration = None


class ImportRequest(BaseModel):
    source: str
    link: bool = False
    name: str | None = None
    ollama_dir: str | None = None
    allow_untrusted: bool = False
    wait: bool = True  # false: answer 202 with the job at once


class VerifyRequest(BaseModel):
    models: list[str] = []
    accept: bool = False


@router.get("/models")
async def installed_models(runtime: RuntimeDep) -> dict[str, Any]:
    """Installed models with their metadata, hash, origin and whether they are loaded."""
    loaded = runtime.scheduler.loaded()
    models = await asyncio.to_thread(runtime.registry.list)
    return {
        "models": [
            {**m.as_dict(), "loaded": m.id in loaded, "memory": runtime.estimate(m)} for m in models
        ]
    }


@router.get("/models/{model_id}")
async def model_details(model_id: str, runtime: RuntimeDep) -> dict[str, Any]:
    """One model, as ``offgrid show`` prints it (``sha256`` is null until the file is
    hashed: ``POST /api/models/verify``; hashing a large file here would hold the request
    for minutes)."""
    model = await asyncio.to_thread(runtime.registry.get, runtime.resolve(model_id))
    return {
        **model.as_dict(),
        "memory": runtime.estimate(model),
        "loaded": model.id in runtime.scheduler.loaded(),
    }


@router.delete("/models/{model_id}")
async def remove_model(model_id: str, runtime: RuntimeDep, force: bool = False) -> dict[str, Any]:
    """Remove a model; refused while it is loaded unless ``force`` (then unloaded first)."""
    target = runtime.resolve(model_id)
    if target in runtime.scheduler.loaded():
        if not force:
            raise ConflictError(
                f"{model_id} is loaded. Stop it first (`offgrid stop {model_id}`) or remove "
                "it with --force (force=true)."
            )
        await runtime.scheduler.unload(target)
    return {"id": model_id, "done": await asyncio.to_thread(runtime.registry.remove, target)}


@router.post("/models/import", response_model=None)
async def import_models(body: ImportRequest, runtime: RuntimeDep) -> dict[str, Any] | JSONResponse:
    """Import models from an allowed folder on this machine (``models.import_jobs``): the
    outcome once done, or with ``wait: false`` the job at once (202)."""
    order = ImportOrder(**body.model_dump(exclude={"wait"}))
    job = runtime.imports.start(order)
    if not body.wait:
        return JSONResponse(job.as_dict(), status_code=202)
    return (await runtime.imports.wait(job)).as_dict()


@router.get("/imports")
async def list_imports(runtime: RuntimeDep) -> dict[str, Any]:
    """Imports running, and the last ones that ended."""
    return {"imports": runtime.imports.list()}


@router.get("/imports/{job_id}")
async def import_state(job_id: str, runtime: RuntimeDep) -> dict[str, Any]:
    """How far an import got: the file being copied, bytes done, outcomes so far."""
    return runtime.imports.get(job_id).as_dict()


@router.post("/models/verify")
async def verify_models(body: VerifyRequest, runtime: RuntimeDep) -> dict[str, Any]:
    """Hash models again and compare (see ``offgrid verify``)."""
    ids = [runtime.resolve(m) for m in body.models]
    checks = await asyncio.to_thread(runtime.registry.verify, ids, accept=body.accept)
    return {"checks": [c.as_dict() for c in checks]}


@router.get("/ps")
async def running_models(runtime: RuntimeDep) -> dict[str, Any]:
    """Loaded models: memory, slots busy, queue, expiry, pid and port; loading and paused
    ones. Each row also carries Ollama's fields (name, model, size, size_vram, details,
    ``expires_at`` as RFC 3339; ``expires_in`` is ours, in seconds)."""
    rows = runtime.scheduler.status()
    now = time.time()
    models = {m.id: m for m in await asyncio.to_thread(runtime.registry.list)}
    for row in rows:
        model = models.get(str(row["id"]))
        row |= {"name": row["id"], "model": row["id"], "size": row.get("memory_bytes", 0)}
        row |= {"size_vram": row.get("vram_bytes", 0), "digest": model.sha256 if model else ""}
        expires_in = row.get("expires_in")
        row["expires_at"] = iso_time(now + expires_in) if isinstance(expires_in, float) else None
        if model is not None:
            context = model.gguf.context_length if model.gguf else 0
            row |= {"details": ollama_details(model), "context_length": context}
    return {"models": rows}


@router.post("/models/{model_id}/load")
async def load_model(
    model_id: str, runtime: RuntimeDep, body: LoadRequest | None = None
) -> dict[str, Any]:
    """Load a model now (and optionally set how long it stays when idle)."""
    keep_alive = body.keep_alive if body is not None else None
    engine = await runtime.scheduler.load(runtime.resolve(model_id), keep_alive=keep_alive)
    return {"id": model_id, "state": engine.state, "pid": engine.pid, "port": engine.port}


@router.post("/models/{model_id}/unload")
async def unload_model(model_id: str, runtime: RuntimeDep) -> dict[str, Any]:
    """Stop a model's engine; ``unloaded`` says whether it was running."""
    return {"id": model_id, "unloaded": await runtime.scheduler.unload(runtime.resolve(model_id))}
