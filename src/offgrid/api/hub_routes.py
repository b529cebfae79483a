"""Routes for getting models while online: Hub search, the catalog, pulls with progress.

``POST /api/pulls`` answers with server-sent events (one JSON state per event, in order,
the last one final) unless the body says ``"stream": false``; the pull goes on if the
client leaves, and ``GET /api/pulls/{id}/events`` watches it again.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel

from offgrid.api.deps import RuntimeDep
from offgrid.api.fields import Size
from offgrid.config import Settings
from offgrid.errors import BadRequestError
from offgrid.hub import client
from offgrid.hub.pulls import Pull, Pulls
from offgrid.models import catalog
from offgrid.resources import system_facts

__all__ = ["router"]

router = APIRouter(prefix="/api")


class PullRequest(BaseModel):
    """What to download: a Hub ``repo`` (with ``file`` or ``quant``), a ``catalog`` id
    (with ``quant``), or a paired ``peer``'s ``model``."""

    repo: str | None = None
    peer: str | None = None
    model: str | None = None
    file: str | None = None
    quant: str | None = None
    catalog: str | None = None
    limit_rate: Size = None  # bytes per second
    stream: bool = True


@router.get("/hub/search")
async def hub_search(
    q: str = "",
    quant: str | None = None,
    sort: Literal["downloads", "likes", "updated"] = "downloads",
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
) -> dict[str, Any]:
    """GGUF repositories on the Hub, with their files, sizes and whether each fits here."""
    hits = await asyncio.to_thread(client.search, q, quant=quant, sort=sort, limit=limit)
    facts = await asyncio.to_thread(system_facts)
    return {"results": [h.as_dict(facts) for h in hits]}


@router.get("/catalog")
async def catalog_models(runtime: RuntimeDep) -> dict[str, Any]:
    """The model catalog, each quantization with the memory it needs and whether it fits."""
    facts = await asyncio.to_thread(system_facts)
    return {"models": [e.as_dict(facts) for e in catalog.load(runtime.settings.data_dir)]}


@router.post("/pulls", response_model=None)
async def start_pull(body: PullRequest, runtime: RuntimeDep) -> StreamingResponse | JSONResponse:
    """Download a model (or join its running download); its progress as SSE."""
    rate = body.limit_rate or None
    if body.peer:
        if not body.model:
            raise BadRequestError("Say which 'model' to pull from the peer.", param="model")
        pull = await runtime.lan().pull(body.peer, body.model, rate)
    else:
        remote = await asyncio.to_thread(_resolve, body, runtime.settings)
        pull = runtime.pulls.start(remote, rate=rate)
    if not body.stream:
        return JSONResponse(pull.as_dict(), status_code=202)
    return _events(runtime.pulls, pull)


def _resolve(body: PullRequest, settings: Settings) -> client.RemoteModel:
    if body.catalog:
        entry = catalog.find(catalog.load(settings.data_dir), body.catalog)
        return client.from_catalog(entry.quant(body.quant))
    if not body.repo:
        raise BadRequestError(
            "Say what to pull: a Hub 'repo' (with 'file' or 'quant'), or a 'catalog' model id."
        )
    return client.pick(client.repo_models(body.repo), body.repo, body.file, body.quant)


@router.get("/pulls")
async def list_pulls(runtime: RuntimeDep) -> dict[str, Any]:
    """Running pulls, and the last ones that ended."""
    return {"pulls": runtime.pulls.list()}


@router.get("/pulls/{pull_id}")
async def pull_state(pull_id: str, runtime: RuntimeDep) -> dict[str, Any]:
    return runtime.pulls.get(pull_id).as_dict()


@router.get("/pulls/{pull_id}/events")
async def pull_events(pull_id: str, runtime: RuntimeDep) -> StreamingResponse:
    """Watch a pull: its state now, then each change, as server-sent events."""
    pulls = runtime.pulls
    return _events(pulls, pulls.get(pull_id))


@router.delete("/pulls/{pull_id}")
async def cancel_pull(pull_id: str, runtime: RuntimeDep) -> dict[str, Any]:
    """Stop a pull; what arrived is kept, and pulling the model again resumes it."""
    return runtime.pulls.cancel(pull_id).as_dict()


def _events(pulls: Pulls, pull: Pull) -> StreamingResponse:
    async def stream() -> AsyncIterator[bytes]:
        async for state in pulls.watch(pull):
            yield b"data: " + json.dumps(state).encode() + b"\n\n"

    return StreamingResponse(stream(), media_type="text/event-stream")
