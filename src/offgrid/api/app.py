"""The app factory: ``create_app(settings)``, the proxy hot path in front of FastAPI.

The lifespan builds the one ``Runtime`` (registry → scheduler → relay, pulls, metrics) and
closes it in ``finally``, so a server that is stopped (Ctrl-C, SIGTERM) leaves no child
behind. Routes receive the runtime as a dependency (``api.deps``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from offgrid import __version__
from offgrid.api.admin_routes import router as admin_router
from offgrid.api.audio_routes import router as audio_router
from offgrid.api.errors import install_error_handlers
from offgrid.api.health_routes import router as health_router
from offgrid.api.hub_routes import router as hub_router
from offgrid.api.ollama.routes import router as ollama_router
from offgrid.api.openai_routes import router as openai_router
from offgrid.api.peer_routes import router as peer_router
from offgrid.api.proxied_schema import document_proxied_routes
from offgrid.api.relay.passthrough import ProxyApp
from offgrid.api.stats_routes import router as stats_router
from offgrid.api.ui_routes import router as ui_router
from offgrid.api.ui_routes import static_files
from offgrid.config import Settings
from offgrid.runtime import Runtime

__all__ = ["create_app"]


def create_app(settings: Settings) -> ProxyApp:
    """The OffGrid HTTP app for ``settings``: the proxy hot path in front of FastAPI."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.runtime = runtime = await Runtime.start(settings)
        try:
            yield
        finally:
            await runtime.close()

    app = FastAPI(title="OffGrid LLM", version=__version__, lifespan=lifespan)
    install_error_handlers(app)
    app.include_router(health_router)
    app.include_router(openai_router)
    app.include_router(audio_router)
    app.include_router(admin_router)
    app.include_router(ollama_router)
    app.include_router(hub_router)
    app.include_router(peer_router)
    app.include_router(stats_router)
    app.include_router(ui_router)
    app.mount("/ui/static", static_files(), name="ui-static")
    document_proxied_routes(app)
    return ProxyApp(app, app.state)
