"""What the box is doing: ``/metrics`` for Prometheus, ``/api/stats`` for the dashboard
(the same figures as JSON, with the machine's CPU, memory, GPUs and models disk)."""

from __future__ import annotations

import asyncio
import os
import shutil
from typing import Any

import psutil
from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

from offgrid.api.metrics import Metrics
from offgrid.config import Settings
from offgrid.resources import system_facts
from offgrid.scheduler import Scheduler

__all__ = ["router"]

router = APIRouter()


def _metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


@router.get("/metrics", include_in_schema=False)
async def prometheus(request: Request) -> Response:
    """Prometheus text format."""
    return Response(_metrics(request).exposition(), media_type=CONTENT_TYPE_LATEST)


@router.get("/api/stats")
async def stats(request: Request) -> dict[str, Any]:
    """The metrics as JSON, the loaded engines, and the machine now."""
    settings: Settings = request.app.state.settings
    scheduler: Scheduler = request.app.state.scheduler
    return {
        "metrics": _metrics(request).stats(),
        "engines": scheduler.status(),
        "system": await asyncio.to_thread(_system, settings),
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
