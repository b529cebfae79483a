"""The OpenAI-compatible routes: parse what OffGrid owns, hand the rest to the relay."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request, Response

from offgrid.api.relay import Relay
from offgrid.errors import BadRequestError, PayloadTooLargeError
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
    return {"object": "list", "data": [_model_card(m) for m in models]}


@router.get("/v1/models/{model_id}")
async def get_model(model_id: str, request: Request) -> dict[str, Any]:
    registry: Registry = request.app.state.registry
    return _model_card(await asyncio.to_thread(registry.get, model_id))


async def _read_json(request: Request, required: str) -> tuple[bytes, dict[str, Any]]:
    """The raw body and its parsed form; 400/413 for what OffGrid itself cannot accept."""
    limit: int = request.app.state.settings.max_request_bytes
    if int(request.headers.get("content-length") or 0) > limit:
        raise PayloadTooLargeError(f"The request body is larger than {limit} bytes.")
    body = await request.body()
    if len(body) > limit:
        raise PayloadTooLargeError(f"The request body is larger than {limit} bytes.")
    try:
        payload = json.loads(body)
    except ValueError as exc:
        raise BadRequestError(f"The request body is not valid JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise BadRequestError("The request body must be a JSON object.")
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequestError("'model' is required: the id of an installed model.", param="model")
    if required not in payload:
        raise BadRequestError(f"'{required}' is required.", param=required)
    stream = payload.get("stream", False)
    if not isinstance(stream, bool) and stream is not None:
        raise BadRequestError("'stream' must be true or false.", param="stream")
    return body, payload


async def _proxy(request: Request, path: str, required: str) -> Response:
    body, payload = await _read_json(request, required)
    relay: Relay = request.app.state.relay
    return await relay.forward(path, body, payload["model"], payload.get("stream") is True)


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    return await _proxy(request, "/v1/chat/completions", "messages")


@router.post("/v1/completions")
async def completions(request: Request) -> Response:
    return await _proxy(request, "/v1/completions", "prompt")


@router.post("/v1/embeddings")
async def embeddings(request: Request) -> Response:
    return await _proxy(request, "/v1/embeddings", "input")
