"""The client dialects OffGrid speaks, and which route speaks which.

OpenAI's routes and the engine's other ones (Responses, rerank, tokenize) go to the engine
unchanged; Anthropic's Messages too, with errors in Anthropic's shape; Ollama's inference
routes are translated (``api.ollama``). ``ROUTES`` lists every route that runs a model: the
relay serves them and the guard lets a read key use them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from offgrid.models.model_info import Task

__all__ = ["FORM_ROUTES", "OLLAMA_PATHS", "ROUTES", "Dialect", "Route", "dialect_of", "task_of"]

Dialect = Literal["openai", "anthropic", "ollama"]


@dataclass(frozen=True)
class Route:
    """A proxied route: the field a request must have besides ``model``, what it asks of
    the model (None: any model), the dialect its errors are written in, and for a
    translated route the engine's path it goes to."""

    required: str
    task: Task | None = "chat"
    dialect: Dialect = "openai"
    engine_path: str | None = None  # None: the same path, body unchanged


# Every route that runs a model (the guard lets a read key use them)
ROUTES = {
    "/v1/chat/completions": Route("messages"),
    "/v1/completions": Route("prompt"),
    "/v1/embeddings": Route("input", "embed"),
    "/v1/responses": Route("input"),
    "/v1/responses/input_tokens": Route("input"),
    "/v1/chat/completions/input_tokens": Route("messages"),
    "/v1/rerank": Route("documents", "rerank"),
    "/tokenize": Route("content", None),
    "/detokenize": Route("tokens", None),
    "/apply-template": Route("messages"),
    "/v1/messages": Route("messages", dialect="anthropic"),
    "/v1/messages/count_tokens": Route("messages", dialect="anthropic"),
    "/api/chat": Route("messages", "chat", "ollama", "/v1/chat/completions"),
    "/api/generate": Route("", "chat", "ollama", "/v1/chat/completions"),
    "/api/embed": Route("input", "embed", "ollama", "/v1/embeddings"),
    "/api/embeddings": Route("", "embed", "ollama", "/v1/embeddings"),
}

# Routes whose body is a form (multipart), not JSON: FastAPI reads the model from it and
# the relay passes the body on as it came
FORM_ROUTES = {"/v1/audio/transcriptions": Route("file", "transcribe")}

# Ollama's routes that FastAPI serves: their errors in Ollama's shape too
OLLAMA_PATHS = frozenset(
    {"/api/version", "/api/tags", "/api/show", "/api/pull", "/api/delete", "/api/copy"}
)


def task_of(path: str) -> Task | None:
    """What a proxied route (by the engine's path) asks of a model; None: anything."""
    route = ROUTES.get(path) or FORM_ROUTES.get(path)
    return route.task if route is not None else None


def dialect_of(path: str) -> Dialect:
    """The dialect a route's errors are written in."""
    route = ROUTES.get(path)
    if route is not None:
        return route.dialect
    return "ollama" if path in OLLAMA_PATHS else "openai"
