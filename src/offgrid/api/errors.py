"""Errors in each client dialect's shape, mapped from OffGrid's hierarchy in one place.

OpenAI's ``{"error": {"message", "type", "param", "code"}}`` by default; Anthropic's
``{"type": "error", "error": {"type", "message"}}`` on its routes (``/v1/messages``); Ollama's
``{"error": "message"}`` on its own. The status is the one the error class carries.
FastAPI's 422 for a malformed body becomes 400, an unknown route 404, and anything
unexpected a 500 whose message says where to look, never a traceback.
"""

from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from offgrid.api.dialects import Dialect, dialect_of
from offgrid.errors import OffGridError

__all__ = [
    "dialect_error",
    "error_body",
    "error_event",
    "error_json",
    "error_response",
    "install_error_handlers",
    "unexpected",
]

log = logging.getLogger("offgrid.api")


def error_body(
    message: str, type_: str, *, param: str | None = None, code: str | int | None = None
) -> dict[str, dict[str, object]]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
}


def dialect_error(
    dialect: Dialect,
    status: int,
    message: str,
    type_: str,
    *,
    param: str | None = None,
    code: str | int | None = None,
) -> bytes:
    """An error body in ``dialect``'s shape."""
    body: object
    if dialect == "anthropic":
        kind = _ANTHROPIC_TYPES.get(
            status, "api_error" if status >= 500 else "invalid_request_error"
        )
        body = {"type": "error", "error": {"type": kind, "message": message}}
    elif dialect == "ollama":
        body = {"error": message}
    else:
        body = error_body(message, type_, param=param, code=code)
    return json.dumps(body).encode()


def error_json(exc: OffGridError, dialect: Dialect = "openai") -> bytes:
    """The body for ``exc`` in ``dialect``'s shape (OpenAI's by default)."""
    return dialect_error(dialect, exc.status, exc.message, exc.type, param=exc.param, code=exc.code)


def error_response(exc: OffGridError) -> Response:
    return Response(error_json(exc), exc.status, exc.headers(), "application/json")


def error_event(exc: OffGridError, dialect: Dialect = "openai") -> bytes:
    """An error as the final server-sent event of a stream that has already begun:
    OpenAI's bare ``data:`` event, or Anthropic's named ``error`` event."""
    event = b"event: error\n" if dialect == "anthropic" else b""
    return event + b"data: " + error_json(exc, dialect) + b"\n\n"


async def _offgrid_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, OffGridError)
    body = error_json(exc, dialect_of(request.url.path))
    return Response(body, exc.status, exc.headers(), "application/json")


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    said = str(first.get("msg", "malformed body")).removeprefix("Value error, ")
    message = f"Invalid request: {said}" + (f" ({where})" if where else "")
    return JSONResponse(error_body(message, "invalid_request_error", param=where or None), 400)


async def _http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    type_ = "server_error" if exc.status_code >= 500 else "invalid_request_error"
    return JSONResponse(
        error_body(str(exc.detail), type_), exc.status_code, headers=dict(exc.headers or {})
    )


def unexpected(exc: Exception) -> OffGridError:
    """A bug's error for the client (its traceback goes to the log, never to the client)."""
    log.error("unexpected error", exc_info=exc)
    return OffGridError(f"Internal error ({type(exc).__name__}); the server log has the details.")


async def _unexpected(_request: Request, exc: Exception) -> Response:
    return error_response(unexpected(exc))


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(OffGridError, _offgrid_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
