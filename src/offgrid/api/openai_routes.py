"""The OpenAI-compatible routes served by FastAPI (the proxied ones are in ``relay``)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter

from offgrid.api.deps import RuntimeDep
from offgrid.models.registry import ModelInfo

__all__ = ["router"]

router = APIRouter()


def _model_card(model: ModelInfo) -> dict[str, Any]:
    """OpenAI's model object, with what the model is and can do (extra fields, which
    OpenAI's clients keep as extras)."""
    return {
        "id": model.id,
        "object": "model",
        "created": int(model.mtime),
        "owned_by": "offgrid-llm",
        "kind": model.kind,
        "capabilities": model.capabilities,
    }


@router.get("/v1/models")
async def list_models(runtime: RuntimeDep) -> dict[str, Any]:
    models = await asyncio.to_thread(runtime.registry.list)
    cards = [_model_card(m) for m in models]
    by_id = {c["id"]: c for c in cards}
    cards += [{**by_id[t], "id": a} for a, t in runtime.aliases.items() if t in by_id]
    federation = runtime.p2p.federation if runtime.p2p and runtime.settings.federation else None
    for model, peer in (federation.offered() if federation else {}).items():
        if model not in by_id:  # a peer's model, served here through federation
            cards.append({"id": model, "object": "model", "created": 0, "owned_by": "offgrid-llm"})
            cards[-1]["peer"] = peer
    return {"object": "list", "data": cards}


@router.get("/v1/models/{model_id}")
async def get_model(model_id: str, runtime: RuntimeDep) -> dict[str, Any]:
    model = await asyncio.to_thread(runtime.registry.get, runtime.resolve(model_id))
    return {**_model_card(model), "id": model_id}
