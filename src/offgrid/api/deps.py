"""What routes receive from FastAPI's dependency injection: the server's runtime."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from offgrid.runtime import Runtime

__all__ = ["RuntimeDep"]


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(_runtime)]
"""A route parameter typed ``RuntimeDep`` receives the runtime its app's lifespan built."""
