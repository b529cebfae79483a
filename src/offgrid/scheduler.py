"""Which engines run: load on demand once per model, a memory budget, queues, idle unload.

A request takes a ``Lease`` on the engine of its model and gives it back when its answer is
finished. The policy is in pure functions tested with tables (``plan_load``,
``plan_eviction``, ``expired``); placement, starting engines, the memory probe and the
clock are injected, so the
``Scheduler`` itself is tested without llama-server.

- N requests arriving together for a cold model share one load; a failed load fails them
  all with its reason.
- Memory is RAM and GPU memory together (``placement.Memory``). A model is placed (how
  many layers on the GPU) for the memory it could have with every idle model stopped: more
  layers on the GPU beat keeping an idle model loaded. Then idle models are stopped, least
  recently used first, only until that placement fits. A model with requests in flight, or
  a pinned one, is never evicted. A model that cannot fit even alone is refused with how
  much it needs and how much there is. ``max_loaded`` caps the count the same way.
- Each model runs at most ``parallel`` requests; up to ``max_queue`` more wait in arrival
  order; beyond that the request gets 429 with Retry-After. A waiter whose client leaves
  leaves the queue.
- An idle model unloads ``keep_alive`` seconds after its last request (0: at once, negative:
  never; a request may set its own); pinned models never unload.
- A model whose engine keeps crashing is not restarted for a while (backoff), and
  ``status()`` says why.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from offgrid.engine.process import Engine, describe_exit
from offgrid.errors import (
    EngineUnavailableError,
    InsufficientMemoryError,
    OverloadedError,
)
from offgrid.models.registry import ModelInfo, Registry
from offgrid.placement import MIB, Memory, Placement

__all__ = ["Lease", "Policy", "Scheduler", "SlotView", "expired", "plan_eviction", "plan_load"]

log = logging.getLogger("offgrid.scheduler")

StartFn = Callable[[ModelInfo, Placement], Awaitable[Engine]]
PlanFn = Callable[[ModelInfo, Memory], Placement]
"""``plan(model, budget)``: the model's best placement within ``budget`` (may not fit)."""

RESERVE = Memory(256 * MIB, 512 * MIB)
CRASH_WINDOW = 120.0  # seconds in which repeated crashes count
CRASH_LIMIT = 3  # crashes in the window before backing off


@dataclass(frozen=True)
class Policy:
    """The scheduler's knobs, from settings."""

    max_loaded: int = 3
    max_queue: int = 64
    parallel: int = 4
    keep_alive: float = 300.0
    pinned: frozenset[str] = frozenset()
    reserve: Memory = RESERVE  # left free for the system and the GPU driver
    vram_limit: int = 0  # most GPU memory all engines together may take (0: no limit)
    parallel_by_model: Mapping[str, int] = field(default_factory=dict)

    def parallel_of(self, model_id: str) -> int:
        return self.parallel_by_model.get(model_id, self.parallel)


@dataclass(frozen=True)
class SlotView:
    """What eviction needs to know of a loaded model."""

    model_id: str
    memory: Memory
    active: int
    last_used: float
    pinned: bool


def _total(slots: Sequence[SlotView]) -> Memory:
    return sum((s.memory for s in slots), Memory())


def plan_eviction(
    need: Memory, free: Memory, loaded: Sequence[SlotView], max_loaded: int
) -> list[str] | None:
    """Idle models to stop, least recently used first, so that ``need`` fits in ``free``
    and the count stays under ``max_loaded``; None when only a busy or pinned one could."""
    victims: list[str] = []
    count = len(loaded)
    idle = sorted((s for s in loaded if s.active == 0 and not s.pinned), key=lambda s: s.last_used)
    for slot in idle:
        if need.fits(free) and count < max_loaded:
            break
        victims.append(slot.model_id)
        free += slot.memory
        count -= 1
    return victims if need.fits(free) and count < max_loaded else None


def plan_load(
    plan: Callable[[Memory], Placement],
    free: Memory,
    loaded: Sequence[SlotView],
    max_loaded: int,
) -> tuple[Placement, list[str]] | None:
    """Where a model goes and which idle models to stop for it, or None to wait.

    ``plan(budget)`` places the model within a budget. The budget here is ``free`` plus
    every idle model's memory; only as many idle models are stopped as that placement
    needs. Raises InsufficientMemoryError when the model cannot fit even with every
    other model stopped (busy ones included, pinned ones not).
    """
    idle = [s for s in loaded if s.active == 0 and not s.pinned]
    budget = free + _total(idle)
    best = plan(budget)
    if best.need.fits(budget):
        victims = plan_eviction(best.need, free, loaded, max_loaded)
        if victims is not None:
            return best, victims
    at_best = free + _total([s for s in loaded if not s.pinned])
    if not (alone := plan(at_best)).need.fits(at_best):
        raise InsufficientMemoryError(alone.need, at_best)
    return None


def expired(active: int, last_used: float, keep_alive: float, pinned: bool, now: float) -> bool:
    """Whether an idle model has outlived its keep-alive."""
    if pinned or active > 0 or keep_alive < 0:
        return False
    return now - last_used >= keep_alive


@dataclass
class _Slot:
    engine: Engine
    placement: Placement
    active: int = 0
    last_used: float = field(default_factory=time.monotonic)
    keep_alive: float = 300.0
    waiters: collections.deque[asyncio.Future[None]] = field(default_factory=collections.deque)


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


@dataclass
class _Health:
    crashes: list[float] = field(default_factory=list)
    backoff_until: float = 0.0
    last_error: str = ""
    crashed: bool = False  # since its engine last started: the next start is a restart


class Scheduler:
    """Owns the running engines; all state changes happen on the event loop."""

    def __init__(
        self,
        registry: Registry,
        start: StartFn,
        *,
        policy: Policy | None = None,
        plan: PlanFn = lambda m, _budget: Placement(0, Memory(m.size)),
        available: Callable[[], Memory] = lambda: Memory(1 << 62),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self.policy = policy or Policy()
        self._start = start
        self._plan = plan
        self._available = available
        self._clock = clock
        self._slots: dict[str, _Slot] = {}
        self._loading: dict[str, asyncio.Task[_Slot]] = {}
        self._health: dict[str, _Health] = collections.defaultdict(_Health)
        self._changed = asyncio.Condition()
        self._load_lock = asyncio.Lock()
        self._reaper: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._idle_changed = asyncio.Event()
        # ("starts" | "crashes" | "restarts", model id) -> count, for /metrics
        self.events: collections.Counter[tuple[str, str]] = collections.Counter()

    # -- requests ---------------------------------------------------------------------
    async def acquire(self, model_id: str, *, keep_alive: float | None = None) -> Lease:
        """A lease on a ready engine for ``model_id``; loads it, or queues, as needed."""
        slot = self._slots.get(model_id)
        if slot is None or not slot.engine.alive:
            task = self._loading.get(model_id)
            if task is None:
                task = asyncio.create_task(self._load(model_id))
                self._loading[model_id] = task
                task.add_done_callback(lambda _t: self._loading.pop(model_id, None))
            slot = await asyncio.shield(task)
        if slot.active >= self.policy.parallel_of(model_id):
            await self._wait_turn(model_id, slot)
        slot.active += 1
        slot.last_used = self._clock()
        if keep_alive is not None:
            slot.keep_alive = keep_alive
        return Lease(self, model_id, slot)

    async def _wait_turn(self, model_id: str, slot: _Slot) -> None:
        if len(slot.waiters) >= self.policy.max_queue:
            raise OverloadedError(
                f"'{model_id}' is busy: {slot.active} requests running and "
                f"{len(slot.waiters)} waiting (OFFGRID_MAX_QUEUE={self.policy.max_queue}). "
                "Retry shortly.",
                retry_after=2,
            )
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        slot.waiters.append(turn)
        try:
            await turn
        except BaseException:
            if turn in slot.waiters:
                slot.waiters.remove(turn)
            elif turn.done() and not turn.cancelled():
                self._hand_over(slot)  # we were given the turn but leave: pass it on
            raise

    def _hand_over(self, slot: _Slot) -> None:
        """Give a freed place to the first waiter still waiting."""
        while slot.waiters and slot.active < self.policy.parallel_of(slot.engine.model.id):
            turn = slot.waiters.popleft()
            if not turn.done():
                turn.set_result(None)
                return

    def _release(self, slot: _Slot) -> None:
        slot.active -= 1
        slot.last_used = self._clock()
        self._hand_over(slot)
        if slot.active == 0 and not slot.waiters:
            self._idle_changed.set()  # the reaper re-plans its next wake-up
            self._background(self._notify())
            if slot.keep_alive == 0 and slot.engine.model.id not in self.policy.pinned:
                self._background(self._unload_if_idle(slot))

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # -- loading ----------------------------------------------------------------------
    async def _load(self, model_id: str) -> _Slot:
        health = self._health[model_id]
        now = self._clock()
        if health.backoff_until > now:
            raise EngineUnavailableError(
                f"'{model_id}' crashed {len(health.crashes)} times recently and is paused "
                f"for {health.backoff_until - now:.0f} s more. Last error: {health.last_error}",
                retry_after=int(health.backoff_until - now) + 1,
            )
        model = await asyncio.to_thread(self.registry.checked, model_id)
        async with self._load_lock:  # one placement decision at a time
            stale = self._slots.pop(model_id, None)
            if stale is not None:
                await stale.engine.stop()
            async with self._changed:
                while True:
                    decision = plan_load(
                        lambda budget: self._plan(model, budget),
                        self._free(),
                        self._views(),
                        self.policy.max_loaded,
                    )
                    if decision is not None:
                        break
                    await self._changed.wait()
            placement, victims = decision
            for victim in victims:
                await self._unload(victim, "to make room")
            try:
                engine = await self._start(model, placement)
            except EngineUnavailableError as exc:
                self._record_crash(model_id, exc.message)
                raise
        self.events["starts", model_id] += 1
        if health.crashed:
            self.events["restarts", model_id] += 1
            health.crashed = False
        slot = _Slot(engine, placement, keep_alive=self.policy.keep_alive, last_used=self._clock())
        engine.on_exit = self._on_exit
        self._slots[model_id] = slot
        self._ensure_reaper()
        return slot

    def _views(self) -> list[SlotView]:
        return [
            SlotView(mid, s.placement.need, s.active, s.last_used, mid in self.policy.pinned)
            for mid, s in self._slots.items()
        ]

    def _free(self) -> Memory:
        """Memory a new engine may take now: what is available, less the reserve and
        what the GPU memory limit leaves to the engines already loaded."""
        free = self._available() - self.policy.reserve
        vram = free.vram
        if self.policy.vram_limit:
            used = sum(s.placement.need.vram for s in self._slots.values())
            vram = min(vram, self.policy.vram_limit - used)
        return Memory(max(0, free.ram), max(0, vram))

    def _record_crash(self, model_id: str, reason: str) -> None:
        health = self._health[model_id]
        now = self._clock()
        health.crashes = [t for t in health.crashes if now - t < CRASH_WINDOW] + [now]
        health.last_error = reason.splitlines()[0][:300] if reason else "unknown"
        health.crashed = True
        self.events["crashes", model_id] += 1
        if len(health.crashes) >= CRASH_LIMIT:
            pause = min(300.0, 10.0 * 2 ** (len(health.crashes) - CRASH_LIMIT))
            health.backoff_until = now + pause
            log.error(
                "%s crashed %d times; pausing it for %.0f s", model_id, len(health.crashes), pause
            )

    def _on_exit(self, engine: Engine) -> None:
        slot = self._slots.get(engine.model.id)
        if slot is not None and slot.engine is engine:
            del self._slots[engine.model.id]
            if engine.state == "exited":
                self._record_crash(engine.model.id, f"engine exited ({engine.exit_reason})")
            for turn in slot.waiters:  # queued requests go back to acquire() and reload
                if not turn.done():
                    turn.set_exception(
                        EngineUnavailableError(f"The engine for '{engine.model.id}' died.")
                    )
            self._background(self._notify())

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` as a task kept referenced until it finishes."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- unloading --------------------------------------------------------------------
    async def _unload(self, model_id: str, why: str) -> None:
        slot = self._slots.pop(model_id, None)
        if slot is not None:
            log.info("unloading %s %s", model_id, why)
            await slot.engine.stop()
            await self._notify()

    async def _unload_if_idle(self, slot: _Slot) -> None:
        model_id = slot.engine.model.id
        if self._slots.get(model_id) is slot and slot.active == 0:
            await self._unload(model_id, "(keep-alive 0)")

    def _ensure_reaper(self) -> None:
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.get_running_loop().create_task(self._reap())

    async def _reap(self) -> None:
        """Unload idle models whose keep-alive ran out; sleeps until the next one is due."""
        while self._slots:
            self._idle_changed.clear()
            now = self._clock()
            due = []
            wake = 30.0
            for mid, s in list(self._slots.items()):
                pinned = mid in self.policy.pinned
                if expired(s.active, s.last_used, s.keep_alive, pinned, now):
                    due.append((mid, s))
                elif s.active == 0 and s.keep_alive >= 0 and not pinned:
                    wake = min(wake, s.last_used + s.keep_alive - now)
            for mid, s in due:
                if self._slots.get(mid) is s and s.active == 0:
                    await self._unload(mid, "after its keep-alive")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle_changed.wait(), max(0.05, wake))

    # -- admin ------------------------------------------------------------------------
    async def load(self, model_id: str, *, keep_alive: float | None = None) -> Engine:
        """Load a model without a request (``POST /api/models/{id}/load``)."""
        lease = await self.acquire(model_id, keep_alive=keep_alive)
        lease.release()
        return lease.engine

    async def discard(self, engine: Engine) -> None:
        """Drop an engine that refuses connections, so that the next request starts anew.

        Usually it has died and its exit is noticed within the wait; if not (a busy box, or
        an engine that lives but no longer listens), it is stopped here and counted as a
        crash.
        """
        if await engine.wait_exited(1.0):
            return  # _on_exit has already removed and reported it
        slot = self._slots.get(engine.model.id)
        if slot is not None and slot.engine is engine:
            del self._slots[engine.model.id]
            await engine.stop(grace=1.0)
            how = describe_exit(engine.proc.returncode if engine.proc else None)
            log.error(
                "engine for %s (pid %s) refused connections and died with %s; "
                "it restarts on the next request",
                engine.model.id,
                engine.pid,
                how,
            )
            self._record_crash(engine.model.id, "the engine stopped accepting connections")
            await self._notify()

    async def unload(self, model_id: str) -> bool:
        """Stop the engine of ``model_id`` if it runs; True when one was stopped."""
        if model_id not in self._slots:
            return False
        await self._unload(model_id, "on request")
        return True

    async def unload_changed(self, paths: set[Path]) -> list[str]:
        """Unload the models whose file among ``paths`` was removed or replaced."""
        gone = []
        for model_id, slot in list(self._slots.items()):
            model = slot.engine.model
            if model.path not in paths:
                continue
            try:
                st = model.path.stat()
                changed = (st.st_size, st.st_mtime) != (model.size, model.mtime)
            except OSError:
                changed = True
            if changed and self._slots.get(model_id) is slot:
                await self._unload(model_id, "because its file was removed or replaced")
                gone.append(model_id)
        return gone

    def loaded(self) -> dict[str, Engine]:
        return {mid: s.engine for mid, s in self._slots.items()}

    def status(self) -> list[dict[str, object]]:
        """Loaded, loading and paused models, for ``/api/ps``."""
        now, wall = self._clock(), time.time()
        rows: list[dict[str, object]] = []
        for mid, s in self._slots.items():
            pinned = mid in self.policy.pinned
            expires = None
            if not pinned and s.keep_alive >= 0:
                expires = (
                    wall + max(0.0, s.last_used + s.keep_alive - now) if not s.active else None
                )
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
                    "parallel": self.policy.parallel_of(mid),
                    "pinned": pinned,
                    "keep_alive": s.keep_alive,
                    "expires_at": expires,
                    "started_at": s.engine.started_at,
                }
            )
        for mid in self._loading:
            if mid not in self._slots:
                rows.append({"id": mid, "state": "loading"})
        for mid, h in self._health.items():
            if h.backoff_until > now and mid not in self._slots:
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
        if self._reaper is not None:
            self._reaper.cancel()
        for task in list(self._loading.values()):
            task.cancel()
        await asyncio.gather(*self._loading.values(), return_exceptions=True)
        await asyncio.gather(*(s.engine.stop() for s in self._slots.values()))
        self._slots.clear()
