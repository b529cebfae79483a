"""The app factory: ``create_app(settings)`` wires registry → scheduler → relay.

The lifespan owns the long-lived parts and stops every engine in ``finally``, so a server
that is stopped (Ctrl-C, SIGTERM) leaves no child behind.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

from fastapi import FastAPI

from offgrid import __version__
from offgrid.api.admin_routes import router as admin_router
from offgrid.api.errors import install_error_handlers
from offgrid.api.hub_routes import router as hub_router
from offgrid.api.metrics import Metrics
from offgrid.api.openai_routes import router as openai_router
from offgrid.api.proxy import ROUTES, ProxyApp
from offgrid.api.relay import Relay
from offgrid.api.stats_routes import router as stats_router
from offgrid.api.ui_routes import router as ui_router
from offgrid.api.ui_routes import static_files
from offgrid.config import (
    Settings,
    parse_aliases,
    parse_duration,
    parse_model_settings,
    parse_size,
)
from offgrid.engine.build import EngineBinary, find_engine
from offgrid.engine.process import Engine, EngineOptions
from offgrid.errors import OffGridError
from offgrid.hub.pulls import Pulls
from offgrid.models.registry import ModelInfo, Registry
from offgrid.models.watcher import watch_folders
from offgrid.placement import Footprint, Memory, Placement, footprint, place
from offgrid.resources import available_memory, gpu_free_memory, gpus
from offgrid.scheduler import Policy, Scheduler

__all__ = [
    "create_app",
    "engine_options",
    "make_starter",
    "manages_gpu",
    "plan_placement",
    "scheduler_policy",
]


@functools.lru_cache(maxsize=8)
def _model_settings(text: str) -> dict[str, dict[str, Any]]:
    return parse_model_settings(text)


def engine_options(settings: Settings, model_id: str = "") -> EngineOptions:
    """How to run ``model_id``: the global settings, with its per-model settings on top."""
    own = _model_settings(settings.model_settings).get(model_id, {})
    layers = int(own.get("gpu_layers", settings.gpu_layers))  # negative: as many as fit
    return EngineOptions(
        context=int(own.get("context_size", settings.max_context)),
        parallel=max(1, int(own.get("parallel", settings.parallel))),
        threads=int(own.get("threads", settings.num_threads)),
        gpu_layers=layers if layers >= 0 else None,
        extra_args=tuple(str(a) for a in own.get("extra_args", ())),
    )


def scheduler_policy(settings: Settings) -> Policy:
    pinned = {m.strip() for m in settings.pinned_models.split(",") if m.strip()}
    per_model = _model_settings(settings.model_settings)
    return Policy(
        max_loaded=max(1, settings.max_loaded_models),
        max_queue=max(0, settings.max_queue),
        parallel=max(1, settings.parallel),
        keep_alive=parse_duration(settings.keep_alive),
        pinned=frozenset(pinned),
        parallel_by_model={m: engine_options(settings, m).parallel for m in per_model},
        vram_limit=parse_size(settings.gpu_memory),
    )


def manages_gpu(settings: Settings) -> bool:
    """Whether OffGrid places layers on GPUs itself: the engine can offload and the GPUs'
    free memory can be read (NVIDIA). Otherwise models are counted in RAM and the
    engine decides its own offload."""
    try:
        binary = find_engine(settings)
    except OffGridError:
        return False
    return bool(gpus()) and binary.offloads()  # no GPU: no need to ask the engine


def plan_placement(settings: Settings, gpu: bool, model: ModelInfo, budget: Memory) -> Placement:
    """Where ``model`` runs within ``budget``, with its settings (``placement.place``)."""
    options = engine_options(settings, model.id)
    return place(_footprint(options, model), budget, gpu=gpu, requested=options.gpu_layers)


def _footprint(options: EngineOptions, model: ModelInfo) -> Footprint:
    """The model's footprint with its engine options. The header of a split model's first
    part describes that part's tensors only: such a model is sized by its files."""
    gguf = None if model.more_parts else model.gguf
    return footprint(model.size, gguf, context=options.context, parallel=options.parallel)


def estimate(settings: Settings, model: ModelInfo) -> dict[str, int]:
    """The memory ``model`` needs with its settings: on the CPU, and with every layer on a
    GPU (for ``offgrid show`` and the dashboard)."""
    fp = _footprint(engine_options(settings, model.id), model)
    gpu = fp.need(fp.max_gpu_layers)
    return {"cpu_ram_bytes": fp.need(0).ram, "gpu_ram_bytes": gpu.ram, "gpu_vram_bytes": gpu.vram}


def make_starter(
    settings: Settings, gpu: bool
) -> Callable[[ModelInfo, Placement], Awaitable[Engine]]:
    """``start(model, placement)`` for the scheduler: find the engine, start it on ``model``
    with the placement's GPU layers when OffGrid manages the GPU."""

    async def start(model: ModelInfo, placement: Placement) -> Engine:
        binary: EngineBinary = find_engine(settings)
        options = engine_options(settings, model.id)
        if gpu:
            options = replace(options, gpu_layers=placement.gpu_layers)
        return await Engine.start(
            binary,
            model,
            options,
            log_dir=settings.cache_dir / "logs",
            timeout=settings.load_timeout,
        )

    return start


def _document_proxy_routes(app: FastAPI) -> None:
    """Add the proxied routes, served by ``ProxyApp`` rather than FastAPI, to the schema."""
    base = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = base()
            for path, required in ROUTES.items():
                body = {
                    "type": "object",
                    "required": ["model", required],
                    "properties": {"model": {"type": "string"}, "stream": {"type": "boolean"}},
                    "additionalProperties": True,
                }
                schema["paths"][path] = {
                    "post": {
                        "summary": f"OpenAI {path.rsplit('/', 1)[-1]} (passed to the engine)",
                        "requestBody": {
                            "required": True,
                            "content": {"application/json": {"schema": body}},
                        },
                        "responses": {
                            "200": {"description": "The engine's answer (JSON or SSE)"},
                            "400": {"description": "Malformed request"},
                            "404": {"description": "Unknown model"},
                        },
                    }
                }
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def create_app(settings: Settings) -> ProxyApp:
    """The OffGrid HTTP app for ``settings``: the proxy hot path in front of FastAPI."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        registry = Registry.for_settings(settings)
        gpu = await asyncio.to_thread(manages_gpu, settings)
        scheduler = Scheduler(
            registry,
            make_starter(settings, gpu),
            policy=scheduler_policy(settings),
            plan=functools.partial(plan_placement, settings, gpu),
            available=lambda: Memory(available_memory(), gpu_free_memory() if gpu else 0),
        )
        relay = Relay(scheduler)
        await relay.start()
        app.state.settings, app.state.registry = settings, registry
        app.state.aliases = parse_aliases(settings.model_aliases)
        app.state.scheduler, app.state.relay = scheduler, relay
        app.state.pulls = pulls = Pulls(registry)
        app.state.metrics = Metrics(scheduler)
        settings.models_dir.mkdir(parents=True, exist_ok=True)
        stop_watch = asyncio.Event()
        watch = asyncio.create_task(
            watch_folders(settings.model_folders, scheduler.unload_changed, stop_watch)
        )
        try:
            yield
        finally:
            stop_watch.set()
            await watch
            await pulls.close()
            await scheduler.close()
            await relay.close()
            registry.close()

    app = FastAPI(title="OffGrid LLM", version=__version__, lifespan=lifespan)
    install_error_handlers(app)
    app.include_router(openai_router)
    app.include_router(admin_router)
    app.include_router(hub_router)
    app.include_router(stats_router)
    app.include_router(ui_router)
    app.mount("/ui/static", static_files(), name="ui-static")
    _document_proxy_routes(app)
    return ProxyApp(app, app.state)
