"""Admin routes for the CLI and the dashboard, under ``/api``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel

from offgrid.config import parse_duration
from offgrid.errors import BadRequestError, ConfigError
from offgrid.scheduler import Scheduler

__all__ = ["router"]

router = APIRouter(prefix="/api")


class LoadRequest(BaseModel):
    keep_alive: str | float | None = None


def _scheduler(request: Request) -> Scheduler:
    scheduler: Scheduler = request.app.state.scheduler
    return scheduler


@router.get("/ps")
async def running_models(request: Request) -> dict[str, Any]:
    """Loaded models: memory, slots busy, queue, expiry, pid and port; loading and paused ones."""
    return {"models": _scheduler(request).status()}


@router.post("/models/{model_id}/load")
async def load_model(
    model_id: str, request: Request, body: LoadRequest | None = None
) -> dict[str, Any]:
    """Load a model now (and optionally set how long it stays when idle)."""
    keep_alive = None
    if body is not None and body.keep_alive is not None:
        try:
            keep_alive = parse_duration(body.keep_alive)
        except ConfigError as exc:
            raise BadRequestError(exc.message, param="keep_alive") from None
    target = request.app.state.aliases.get(model_id, model_id)
    engine = await _scheduler(request).load(target, keep_alive=keep_alive)
    return {"id": model_id, "state": engine.state, "pid": engine.pid, "port": engine.port}


@router.post("/models/{model_id}/unload")
async def unload_model(model_id: str, request: Request) -> dict[str, Any]:
    """Stop a model's engine; ``unloaded`` says whether it was running."""
    return {"id": model_id, "unloaded": await _scheduler(request).unload(model_id)}
