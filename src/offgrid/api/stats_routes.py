"""What the box is doing: ``/metrics`` for Prometheus, ``/api/stats`` for the dashboard
(the same figures as JSON, with the machine's CPU, memory, GPUs and models disk, and the
last hour's history for its charts)."""

from __future__ import annotations

import asyncio
import os
import shutil
from typing import Any

import psutil
from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST

from offgrid.api.deps import RuntimeDep
from offgrid.config import Settings
from offgrid.resources import system_facts

__all__ = ["router"]

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
async def prometheus(runtime: RuntimeDep) -> Response:
    """Prometheus text format."""
    return Response(runtime.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


@router.get("/api/stats")
async def stats(runtime: RuntimeDep) -> dict[str, Any]:
    """The metrics as JSON, the loaded engines, the machine now, and the last hour."""
    return {
        "metrics": runtime.metrics.stats(),
        "history": runtime.metrics.history(),
        "engines": runtime.scheduler.status(),
        "system": await asyncio.to_thread(_system, runtime.settings),
    }


def _system(settings: Settings) -> dict[str, Any]:
    facts = system_facts()
    disk = shutil.disk_usage(settings.models_dir)
    return {
        "cpu_percent": psutil.cpu_percent(interval=None),  # since the previous call
        "cpu_cores": facts.cpu_cores,
        "load_average": list(os.getloadavg()),
        "ram_total": facts.ram_total,
        "ram_available": facts.ram_available,
        "gpus": [
            {"index": g.index, "name": g.name, "total": g.total, "free": g.free} for g in facts.gpus
        ],
        "models_dir": str(settings.models_dir),
        "disk_total": disk.total,
        "disk_free": disk.free,
    }
