"""The one error hierarchy of OffGrid, with messages written for the person reading them.

    OffGridError                     500 server_error
    ├── ConfigError                  500 server_error      (bad settings or config file)
    ├── BadRequestError              400 invalid_request_error
    │   ├── PayloadTooLargeError     413 invalid_request_error
    │   ├── HeadersTooLargeError     431 invalid_request_error
    │   ├── RequestTimeoutError      408 invalid_request_error (a body sent too slowly)
    │   └── IncompleteGGUFError      400 invalid_request_error (a GGUF file cut short)
    ├── AuthenticationError          401 invalid_request_error / invalid_api_key
    │                                    (no key, a wrong, revoked or expired one)
    ├── PermissionDeniedError        403 invalid_request_error / permission_denied
    │                                    (a read-only key on an admin route)
    ├── NotFoundError                404 invalid_request_error / not_found
    │   └── ModelNotFoundError       404 invalid_request_error / model_not_found
    ├── IntegrityError               409 invalid_request_error / integrity_check_failed
    │                                    (a file's sha256 differs from what it must be)
    ├── ConflictError                409 invalid_request_error (name clash, model in use)
    ├── OverloadedError              429 server_error      (queue full; has Retry-After)
    ├── EngineError                  502 server_error      (the engine failed a request)
    │   └── EngineUnavailableError   503 server_error      (engine missing, crashed, or loading)
    │       └── InsufficientMemoryError  (the model cannot fit even alone)
    ├── StorageError                 507 server_error      (disk full, unwritable folder)
    ├── UnreachableError             503 server_error      (the Hub cannot be reached: offline)
    ├── Cancelled                    499 invalid_request_error / cancelled (a pull stopped)
    └── SetupError                   500 server_error      (engine build, model fetch)

Each class carries its HTTP status and OpenAI error type; the API maps the base class
once (``offgrid.api.errors``), the CLI prints ``str(error)``.
"""

from __future__ import annotations

from typing import Protocol

__all__ = [
    "AuthenticationError",
    "BadRequestError",
    "Cancelled",
    "ConfigError",
    "ConflictError",
    "EngineError",
    "EngineUnavailableError",
    "HeadersTooLargeError",
    "IncompleteGGUFError",
    "InsufficientMemoryError",
    "IntegrityError",
    "ModelNotFoundError",
    "NotFoundError",
    "OffGridError",
    "OverloadedError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "RequestTimeoutError",
    "SetupError",
    "StorageError",
    "UnreachableError",
]


class OffGridError(Exception):
    """Base of every error OffGrid raises on purpose."""

    status = 500
    type = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def headers(self) -> dict[str, str]:
        """Extra HTTP headers this error carries (e.g. Retry-After)."""
        return {}


class ConfigError(OffGridError):
    """A setting or the config file is invalid."""


class SetupError(OffGridError):
    """Building the engine or fetching a model failed."""


class BadRequestError(OffGridError):
    """The client sent something we cannot act on."""

    status = 400
    type = "invalid_request_error"


class _EndsConnection(BadRequestError):
    """A refusal before the body was read whole: the connection ends with it (the server
    would otherwise keep it open for the rest of the body, however slowly it comes)."""

    def headers(self) -> dict[str, str]:
        return {"Connection": "close"}


class PayloadTooLargeError(_EndsConnection):
    status = 413
    code = "request_too_large"


class HeadersTooLargeError(BadRequestError):
    status = 431
    code = "request_header_fields_too_large"


class RequestTimeoutError(_EndsConnection):
    status = 408
    code = "request_timeout"


class IncompleteGGUFError(BadRequestError):
    """The file starts like GGUF but ends early: still being copied, or truncated."""


class AuthenticationError(OffGridError):
    """The request has no valid API key, and this server requires one."""

    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer"}


class PermissionDeniedError(OffGridError):
    """The key is valid but may not do this (a read-only key on an admin route)."""

    status = 403
    type = "invalid_request_error"
    code = "permission_denied"


class NotFoundError(OffGridError):
    """What was asked for does not exist: a repository or file on the Hub, a catalog
    entry, a pull."""

    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFoundError(NotFoundError):
    code = "model_not_found"

    def __init__(self, model: str, available: list[str] | None = None) -> None:
        hint = ""
        if available is not None:
            hint = (
                f" Installed models: {', '.join(available)}."
                if available
                else " No model is installed: add a .gguf file to the models folder."
            )
        super().__init__(f"The model '{model}' does not exist.{hint}", param="model")


class IntegrityError(OffGridError):
    """A file's sha256 is not the one recorded or promised for it."""

    status = 409
    type = "invalid_request_error"
    code = "integrity_check_failed"


class ConflictError(OffGridError):
    """The request clashes with what exists: a name taken by another file, a model in use."""

    status = 409
    type = "invalid_request_error"
    code = "conflict"


class StorageError(OffGridError):
    """A folder cannot take a file: no space left, read-only, or unwritable."""

    status = 507


class UnreachableError(OffGridError):
    """A remote service (the HuggingFace Hub) cannot be reached or failed: the box may be
    offline."""

    status = 503
    code = "unreachable"


class Cancelled(OffGridError):
    """A download was stopped on request; its partial file stays, to resume later."""

    status = 499
    type = "invalid_request_error"
    code = "cancelled"


class EngineError(OffGridError):
    """The engine answered badly or the connection to it broke."""

    status = 502


class EngineUnavailableError(EngineError):
    """No engine can serve the request right now (missing binary, crash, load failure)."""

    status = 503

    def __init__(self, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)} if self.retry_after else {}


class _Amount(Protocol):
    """An amount of memory that can say itself (``placement.Memory``); a protocol, so that
    this module imports nothing of OffGrid's."""

    def describe(self) -> str: ...


class InsufficientMemoryError(EngineUnavailableError):
    """The model needs more memory than the machine can give, even with others unloaded."""

    code = "insufficient_memory"

    def __init__(self, need: _Amount, available: _Amount) -> None:
        super().__init__(
            f"This model needs about {need.describe()} and at most "
            f"{available.describe()} can be made available. Use a smaller quantization, "
            "a smaller OFFGRID_MAX_CONTEXT or OFFGRID_PARALLEL, or free memory."
        )


class OverloadedError(OffGridError):
    """Too many requests wait for a model; the client should retry later."""

    status = 429
    type = "server_error"
    code = "overloaded"

    def __init__(self, message: str, *, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}
