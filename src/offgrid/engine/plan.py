"""What the settings make of a model: its engine options, memory estimate and placement,
the scheduler's policy, and how an engine is started for the scheduler.

Per-model settings (``OFFGRID_MODEL_SETTINGS``) go on top of the global ones here, in one
place, so the server, ``offgrid show`` and the tests size a model the same way.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from offgrid.config import Settings
from offgrid.engine.build import find_engine
from offgrid.engine.process import Engine, EngineOptions, default_threads
from offgrid.engine.tune import load_tuned
from offgrid.errors import OffGridError
from offgrid.models.registry import ModelInfo
from offgrid.placement import Footprint, Memory, Placement, footprint, place
from offgrid.resources import gpus
from offgrid.scheduler import Policy
from offgrid.setting_values import parse_model_settings
from offgrid.units import parse_duration, parse_size

__all__ = [
    "engine_options",
    "estimate",
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
        # flags `offgrid tune` found on this machine, then the model's own (which win)
        extra_args=(
            *load_tuned(settings.data_dir, model_id),
            *(str(a) for a in own.get("extra_args", ())),
        ),
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
        ram_limit=parse_size(settings.memory),
        cpu_cores=default_threads() if settings.cpu_turns else 0,
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
    """The model's footprint with its engine options, its projector counted in. The header
    of a split model's first part describes that part's tensors only: such a model is
    sized by its files."""
    gguf = None if model.more_parts else model.gguf
    return footprint(
        model.size - model.projector_size,
        gguf,
        context=options.context,
        parallel=options.parallel,
        projector=model.projector_size,
    )


def estimate(settings: Settings, model: ModelInfo) -> dict[str, int]:
    """The memory ``model`` needs with its settings: on the CPU, and with every layer on a
    GPU (for ``offgrid show`` and the dashboard)."""
    fp = _footprint(engine_options(settings, model.id), model)
    gpu = fp.need(fp.max_gpu_layers)
    return {"cpu_ram_bytes": fp.need(0).ram, "gpu_ram_bytes": gpu.ram, "gpu_vram_bytes": gpu.vram}


def make_starter(
    settings: Settings,
    gpu: bool,
    extra: Callable[[ModelInfo], Awaitable[list[str]]] | None = None,
) -> Callable[[ModelInfo, Placement], Awaitable[Engine]]:
    """``start(model, placement)`` for the scheduler: find the engine, start it on ``model``
    with the placement's GPU layers when OffGrid manages the GPU, and the arguments
    ``extra`` gives for it at that moment (a split over peers' RPC workers, ``p2p.rpc``)."""

    async def start(model: ModelInfo, placement: Placement) -> Engine:
        options = engine_options(settings, model.id)
        if gpu:
            options = replace(options, gpu_layers=placement.gpu_layers)
        if extra is not None and (more := await extra(model)):
            options = replace(options, extra_args=(*more, *options.extra_args))
        return await Engine.start(
            find_engine(settings),
            model,
            options,
            log_dir=settings.cache_dir / "logs",
            timeout=settings.load_timeout,
        )

    return start
