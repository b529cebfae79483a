"""Errors in OpenAI's shape, mapped from OffGrid's hierarchy in one place.

``{"error": {"message", "type", "param", "code"}}`` with the status the error class
carries. FastAPI's 422 for a malformed body becomes 400, an unknown route 404, and anything
unexpected a 500 whose message says where to look, never a traceback.
"""

from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from offgrid.errors import OffGridError

__all__ = [
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


def error_json(exc: OffGridError) -> bytes:
    """The OpenAI-shaped body for ``exc``."""
    body = error_body(exc.message, exc.type, param=exc.param, code=exc.code)
    return json.dumps(body).encode()


def error_response(exc: OffGridError) -> Response:
    return Response(error_json(exc), exc.status, exc.headers(), "application/json")


def error_event(exc: OffGridError) -> bytes:
    """An error as the final server-sent event of a stream that has already begun."""
    return b"data: " + error_json(exc) + b"\n\n"


async def _offgrid_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, OffGridError)
    return error_response(exc)


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    message = f"Invalid request: {first.get('msg', 'malformed body')}" + (
        f" ({where})" if where else ""
    )
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
