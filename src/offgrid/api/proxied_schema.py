"""The request bodies of the proxied routes, for the OpenAPI schema only.

``ProxyApp`` serves these routes before FastAPI sees them, and the body goes to the engine
as the client sent it (DESIGN.md decision 8), so nothing here validates a request. These
models say what each dialect's body holds, so that the schema at ``/openapi.json`` tells
clients (and fuzzers: issue 18) the real shape instead of an opaque object. Unknown fields
are allowed: they pass through to the engine.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field

from offgrid.api.dialects import ROUTES

__all__ = ["document_proxied_routes"]


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(description="An installed model's id, an alias, or Ollama's name:tag")


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[dict[str, Any]] | None = None


class _Sampling(_Body):
    stream: bool = False
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    seed: int | None = None
    stop: str | list[str] | None = None


class ChatCompletion(_Sampling):
    messages: list[Message]
    tools: list[dict[str, Any]] | None = None
    response_format: dict[str, Any] | None = None


class Completion(_Sampling):
    prompt: str | list[str]


class Embeddings(_Body):
    input: str | list[str] | list[int] | list[list[int]]


class Responses(_Body):
    input: str | list[dict[str, Any]]
    stream: bool = False
    max_output_tokens: int | None = Field(None, ge=1)


class Rerank(_Body):
    query: str
    documents: list[str]
    top_n: int | None = Field(None, ge=1)


class Tokenize(_Body):
    content: str
    add_special: bool = False


class Detokenize(_Body):
    tokens: list[int]


class ApplyTemplate(_Body):
    messages: list[Message]


class AnthropicMessages(_Body):
    messages: list[Message]
    max_tokens: int = Field(ge=1)
    system: str | list[dict[str, Any]] | None = None
    stream: bool = False


class OllamaChat(_Body):
    messages: list[Message] = []
    stream: bool = True
    format: str | dict[str, Any] | None = None
    options: dict[str, Any] | None = None
    keep_alive: str | float | None = None
    think: bool | None = None


class OllamaGenerate(_Body):
    prompt: str = ""
    system: str | None = None
    stream: bool = True
    raw: bool = False
    format: str | dict[str, Any] | None = None
    options: dict[str, Any] | None = None
    keep_alive: str | float | None = None
    images: list[str] | None = None


class OllamaEmbed(_Body):
    input: str | list[str]
    keep_alive: str | float | None = None


class OllamaEmbeddings(_Body):
    prompt: str
    keep_alive: str | float | None = None


BODIES: dict[str, type[BaseModel]] = {
    "/v1/chat/completions": ChatCompletion,
    "/v1/completions": Completion,
    "/v1/embeddings": Embeddings,
    "/v1/responses": Responses,
    "/v1/responses/input_tokens": Responses,
    "/v1/chat/completions/input_tokens": ChatCompletion,
    "/v1/rerank": Rerank,
    "/tokenize": Tokenize,
    "/detokenize": Detokenize,
    "/apply-template": ApplyTemplate,
    "/v1/messages": AnthropicMessages,
    "/v1/messages/count_tokens": AnthropicMessages,
    "/api/chat": OllamaChat,
    "/api/generate": OllamaGenerate,
    "/api/embed": OllamaEmbed,
    "/api/embeddings": OllamaEmbeddings,
}


def document_proxied_routes(app: FastAPI) -> None:
    """Add the proxied routes, with their bodies' schemas, to ``app``'s OpenAPI schema."""
    base = app.openapi
    assert set(BODIES) == set(ROUTES), "every proxied route has its body described"

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = base()
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for path, body in BODIES.items():
                described = body.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(described.pop("$defs", {}))
                components[body.__name__] = described
                route = ROUTES[path]
                schema["paths"][path] = {
                    "post": {
                        "summary": f"{route.dialect} {path} (relayed to the engine)",
                        "requestBody": {
                            "required": True,
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": f"#/components/schemas/{body.__name__}"}
                                }
                            },
                        },
                        "responses": {
                            "200": {"description": "The engine's answer (JSON, SSE or NDJSON)"},
                            "400": {"description": "Malformed request"},
                            "404": {"description": "Unknown model"},
                            "429": {"description": "The model's queue is full"},
                        },
                    }
                }
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
