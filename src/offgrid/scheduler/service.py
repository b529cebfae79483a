"""The ``Scheduler``: what the server calls. Requests take leases, admin routes load and
unload, ``/api/ps`` reads ``status()``; the engines themselves are ``lifecycle.Engines``."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from offgrid.engine.process import Engine
from offgrid.models.model_info import Task
from offgrid.models.registry import Registry
from offgrid.placement import Memory, Placement
from offgrid.scheduler.clock import Clock, MonotonicClock
from offgrid.scheduler.lifecycle import Engines, PlanFn, StartFn
from offgrid.scheduler.policy import Policy
from offgrid.scheduler.queues import Lease, SentBack, Slot

__all__ = ["Scheduler"]


class Scheduler:
    """Owns the running engines; all state changes happen on the event loop.

    ``start``, ``plan`` (placement), ``available`` (the memory probe) and ``clock`` are
    injected, so that it runs in tests without llama-server.
    """

    def __init__(
        self,
        registry: Registry,
        start: StartFn,
        *,
        policy: Policy | None = None,
        plan: PlanFn = lambda m, _budget: Placement(0, Memory(m.size)),
        available: Callable[[], Memory] = lambda: Memory(1 << 62),
        clock: Clock | None = None,
    ) -> None:
        self._clock = clock or MonotonicClock()
        self._engines = Engines(registry, start, policy or Policy(), plan, available, self._clock)

    @property
    def registry(self) -> Registry:
        return self._engines.registry

    @property
    def policy(self) -> Policy:
        return self._engines.policy

    @property
    def events(self) -> Counter[tuple[str, str]]:
        """("starts" | "crashes" | "restarts", model id) -> count, for /metrics."""
        return self._engines.events

    # -- requests ---------------------------------------------------------------------
    async def acquire(
        self, model_id: str, *, keep_alive: float | None = None, task: Task | None = None
    ) -> Lease:
        """A lease on a ready engine for ``model_id``; loads it, or queues, as needed.
        A model that cannot do ``task`` is refused (BadRequestError) before it loads."""
        asked = self._clock.now()
        while True:
            slot = await self._engines.ready(model_id, task)
            if self._engines.slots.get(model_id) is not slot:
                continue  # stopped between its load and our turn to run: ask again
            try:
                await slot.enter(self.policy.max_queue)
                break
            except SentBack:  # its engine stopped before our turn: ask again
                continue
        self._used(slot, keep_alive)
        return Lease(model_id, slot, self._release, slot.last_used - asked)

    def _used(self, slot: Slot, keep_alive: float | None) -> None:
        """``slot`` was asked for now; with ``keep_alive``, that is its keep-alive."""
        slot.last_used = self._clock.now()
        if keep_alive is not None:
            slot.keep_alive = keep_alive

    def _release(self, slot: Slot) -> None:
        slot.leave()
        slot.last_used = self._clock.now()
        if slot.active == 0:  # idle, or draining with a queue: either way it can make room
            self._engines.went_idle(slot)

    # -- admin ------------------------------------------------------------------------
    async def load(self, model_id: str, *, keep_alive: float | None = None) -> Engine:
        """Load a model without a request (``POST /api/models/{id}/load``): it takes no
        place among the requests, nor a turn on the CPU, since it computes nothing."""
        slot = await self._engines.ready(model_id)
        self._used(slot, keep_alive)
        if not slot.busy:
            self._engines.went_idle(slot)  # its keep-alive counts from now (0: unload)
        return slot.engine

    async def discard(self, engine: Engine) -> None:
        """Drop an engine that refuses connections, so that the next request starts anew."""
        await self._engines.discard(engine)

    async def unload(self, model_id: str) -> bool:
        """Stop the engine of ``model_id`` if it runs; True when one was stopped."""
        return await self._engines.unload(model_id)

    async def unload_changed(self, paths: set[Path]) -> list[str]:
        """Unload the models whose file among ``paths`` was removed or replaced."""
        return await self._engines.unload_changed(paths)

    def loaded(self) -> dict[str, Engine]:
        return {mid: s.engine for mid, s in self._engines.slots.items()}

    def status(self) -> list[dict[str, object]]:
        """Loaded, loading and paused models, for ``/api/ps``."""
        now, wall = self._clock.now(), time.time()
        slots = self._engines.slots
        rows: list[dict[str, object]] = []
        for mid, s in slots.items():
            pinned = mid in self.policy.pinned
            expires = None  # seconds until the idle reaper stops it; never, or busy: None
            if not pinned and s.keep_alive >= 0 and not s.busy:
                expires = max(0.0, s.last_used + s.keep_alive - now)
            rows.append(
                {
                    "id": mid,
                    "state": s.engine.state,
                    "pid": s.engine.pid,
                    "port": s.engine.port,
                    "memory_bytes": s.placement.need.ram + s.placement.need.vram,
                    "ram_bytes": s.placement.need.ram,
                    "vram_bytes": s.placement.need.vram,
                    "gpu_layers": s.placement.gpu_layers,
                    "active_requests": s.active,
                    "queued_requests": len(s.waiters),
                    "draining": s.draining,
                    "cpu_threads": s.cpu,  # computing on these cores, taking turns
                    "waiting_for_cpu": s in self._engines.turns.waiting,
                    "parallel": s.parallel,
                    "pinned": pinned,
                    "keep_alive": s.keep_alive,
                    "expires_in": expires,
                    "started_at": s.engine.started_at,
                }
            )
        for mid in self._engines.loading:
            if mid not in slots:
                rows.append({"id": mid, "state": "loading"})
        for mid, h in self._engines.health.items():
            if h.backoff_until > now and mid not in slots:
                rows.append(
                    {
                        "id": mid,
                        "state": "backoff",
                        "retry_at": wall + h.backoff_until - now,
                        "crashes": len(h.crashes),
                        "last_error": h.last_error,
                    }
                )
        return rows

    async def close(self) -> None:
        """Stop every engine (and any load in progress)."""
        await self._engines.close()
