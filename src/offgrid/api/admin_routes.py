"""Admin routes for the CLI and the dashboard, under ``/api``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from offgrid.scheduler import Scheduler

__all__ = ["router"]

router = APIRouter(prefix="/api")


@router.get("/ps")
async def running_models(request: Request) -> dict[str, Any]:
    """The loaded models: pid, port, state and requests in flight."""
    scheduler: Scheduler = request.app.state.scheduler
    return {"models": scheduler.status()}
