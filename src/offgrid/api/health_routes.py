"""Health for people and for machines: ``/health`` as the seed shapes it, ``/livez`` (the
process answers) and ``/readyz`` (it can serve: the registry reads and an engine binary is
there). All three stay open when API keys are required (``auth.guard``)."""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from offgrid.api.deps import RuntimeDep
from offgrid.engine.build import find_engine
from offgrid.errors import OffGridError
from offgrid.runtime import Runtime

__all__ = ["router"]

router = APIRouter()


@router.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok", "timestamp": datetime.now(UTC).isoformat()}


@router.get("/livez")
async def livez() -> dict[str, str]:
    """The process is up and its event loop answers."""
    return {"status": "ok"}


@router.get("/readyz", response_model=None)
async def readyz(runtime: RuntimeDep) -> dict[str, Any] | JSONResponse:
    """Ready to serve: the registry answers and an engine binary is present; else 503 with
    what is missing."""
    problems = await asyncio.to_thread(_problems, runtime)
    if problems:
        return JSONResponse({"status": "not ready", "problems": problems}, status_code=503)
    return {"status": "ok"}


def _problems(runtime: Runtime) -> list[str]:
    problems = []
    try:
        runtime.registry.ids()
    except (OffGridError, OSError) as exc:
        problems.append(f"model registry: {exc}")
    if not os.access(runtime.settings.models_dir, os.R_OK | os.X_OK):
        problems.append(f"models folder {runtime.settings.models_dir} cannot be read")
    try:
        find_engine(runtime.settings)
    except OffGridError as exc:
        problems.append(f"engine: {exc.message}")
    return problems
