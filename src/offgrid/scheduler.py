"""Which engine serves a request: load on demand, once per model; swap when the cap is reached.

A request takes a ``Lease`` on the engine of its model and gives it back when its response
is finished. N requests arriving together for a cold model share one load; a failed load
fails them all with its reason. At most ``max_loaded`` engines run: to load another, the
least recently used idle engine is stopped, after its in-flight requests are done.
Starting engines is injected (``start``), so the policy is testable without llama-server.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from offgrid.engine.process import Engine
from offgrid.models.registry import ModelInfo, Registry

__all__ = ["Lease", "Scheduler", "pick_victim"]

log = logging.getLogger("offgrid.scheduler")

StartFn = Callable[[ModelInfo], Awaitable[Engine]]


@dataclass
class _Slot:
    engine: Engine
    active: int = 0
    last_used: float = field(default_factory=time.monotonic)


def pick_victim(slots: dict[str, _Slot]) -> str | None:
    """The idle model used least recently, or None when every loaded model is busy."""
    idle = [(s.last_used, mid) for mid, s in slots.items() if s.active == 0]
    return min(idle)[1] if idle else None


class Lease:
    """A request's hold on an engine; ``release()`` is idempotent."""

    def __init__(self, scheduler: Scheduler, model_id: str, slot: _Slot) -> None:
        self._scheduler = scheduler
        self.model_id = model_id
        self._slot = slot
        self.engine = slot.engine
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._scheduler._release(self._slot)


class Scheduler:
    """Owns the running engines; all state changes happen on the event loop."""

    def __init__(self, registry: Registry, start: StartFn, *, max_loaded: int = 1) -> None:
        self.registry = registry
        self._start = start
        self.max_loaded = max_loaded
        self._slots: dict[str, _Slot] = {}
        self._loading: dict[str, asyncio.Task[_Slot]] = {}
        self._changed = asyncio.Condition()

    def loaded(self) -> dict[str, Engine]:
        return {mid: s.engine for mid, s in self._slots.items()}

    def status(self) -> list[dict[str, object]]:
        """The loaded models, for ``/api/ps``."""
        loaded: list[dict[str, object]] = [
            {
                "id": mid,
                "state": s.engine.state,
                "pid": s.engine.pid,
                "port": s.engine.port,
                "active_requests": s.active,
                "loading": False,
                "started_at": s.engine.started_at,
            }
            for mid, s in self._slots.items()
        ]
        loading = [mid for mid in self._loading if mid not in self._slots]
        return loaded + [{"id": mid, "loading": True} for mid in loading]

    async def acquire(self, model_id: str) -> Lease:
        """A lease on a ready engine for ``model_id``, loading it first if needed."""
        slot = self._slots.get(model_id)
        if slot is None or not slot.engine.alive:
            task = self._loading.get(model_id)
            if task is None:
                task = asyncio.create_task(self._load(model_id))
                self._loading[model_id] = task
                task.add_done_callback(lambda _t: self._loading.pop(model_id, None))
            slot = await asyncio.shield(task)
        slot.active += 1
        slot.last_used = time.monotonic()
        return Lease(self, model_id, slot)

    def _release(self, slot: _Slot) -> None:
        slot.active -= 1
        slot.last_used = time.monotonic()
        if slot.active == 0:
            asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _load(self, model_id: str) -> _Slot:
        model = await asyncio.to_thread(self.registry.get, model_id)
        stale = self._slots.pop(model_id, None)
        if stale is not None:
            await stale.engine.stop()
        async with self._changed:
            while len(self._slots) >= self.max_loaded:
                victim = pick_victim(self._slots)
                if victim is None:
                    await self._changed.wait()
                    continue
                await self._unload(victim)
        engine = await self._start(model)
        slot = _Slot(engine)
        engine.on_exit = self._on_exit
        self._slots[model_id] = slot
        return slot

    def _on_exit(self, engine: Engine) -> None:
        slot = self._slots.get(engine.model.id)
        if slot is not None and slot.engine is engine:
            del self._slots[engine.model.id]
            asyncio.get_running_loop().create_task(self._notify())

    async def _unload(self, model_id: str) -> None:
        slot = self._slots.pop(model_id, None)
        if slot is not None:
            log.info("unloading %s to make room", model_id)
            await slot.engine.stop()

    async def unload(self, model_id: str) -> bool:
        """Stop the engine of ``model_id`` if it runs; True when one was stopped."""
        if model_id not in self._slots:
            return False
        await self._unload(model_id)
        return True

    async def close(self) -> None:
        """Stop every engine (and any load in progress)."""
        for task in list(self._loading.values()):
            task.cancel()
        await asyncio.gather(*self._loading.values(), return_exceptions=True)
        await asyncio.gather(*(s.engine.stop() for s in self._slots.values()))
        self._slots.clear()
