"""The OpenAI-compatible routes served by FastAPI (the proxied ones live in ``proxy``)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request

from offgrid.models.registry import ModelInfo, Registry

__all__ = ["router"]

router = APIRouter()


def _model_card(model: ModelInfo) -> dict[str, Any]:
    return {
        "id": model.id,
        "object": "model",
        "created": int(model.mtime),
        "owned_by": "offgrid-llm",
    }


@router.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok", "timestamp": datetime.now(UTC).isoformat()}


@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, Any]:
    registry: Registry = request.app.state.registry
    models = await asyncio.to_thread(registry.list)
    cards = [_model_card(m) for m in models]
    by_id = {c["id"]: c for c in cards}
    aliases: dict[str, str] = request.app.state.aliases
    cards += [{**by_id[t], "id": a} for a, t in aliases.items() if t in by_id]
    return {"object": "list", "data": cards}


@router.get("/v1/models/{model_id}")
async def get_model(model_id: str, request: Request) -> dict[str, Any]:
    registry: Registry = request.app.state.registry
    target = request.app.state.aliases.get(model_id, model_id)
    return {**_model_card(await asyncio.to_thread(registry.get, target)), "id": model_id}
