"""Engine lifecycle: start one engine per model within the memory budget, count crashes
and pause a model that keeps crashing, stop engines on request, for room, or once their
keep-alive runs out."""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import math
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from offgrid.engine.process import Engine, EngineState, describe_exit
from offgrid.errors import BadRequestError, EngineUnavailableError
from offgrid.models.model_info import Task
from offgrid.models.registry import ModelInfo, Registry
from offgrid.placement import Memory, Placement
from offgrid.scheduler.clock import Clock
from offgrid.scheduler.cpu_turns import CpuTurns, cpu_threads
from offgrid.scheduler.policy import Policy, SlotView, expired, plan_drain, plan_load
from offgrid.scheduler.queues import Slot

__all__ = ["CRASH_LIMIT", "CRASH_WINDOW", "Engines", "Health", "PlanFn", "StartFn"]

log = logging.getLogger("offgrid.scheduler")

StartFn = Callable[[ModelInfo, Placement], Awaitable[Engine]]
PlanFn = Callable[[ModelInfo, Memory], Placement]
"""``plan(model, budget)``: the model's best placement within ``budget`` (may not fit)."""

CRASH_WINDOW = 120.0  # seconds in which repeated crashes count
CRASH_LIMIT = 3  # crashes in the window before backing off


@dataclass
class Health:
    """A model's recent crashes, and until when it is paused for them."""

    crashes: list[float] = field(default_factory=list)
    backoff_until: float = 0.0
    last_error: str = ""
    crashed: bool = False  # since its engine last started: the next start is a restart

    def record(self, reason: str, now: float) -> float | None:
        """Count a crash at ``now``; the pause it starts, or None while under the limit."""
        self.crashes = [t for t in self.crashes if now - t < CRASH_WINDOW] + [now]
        self.last_error = reason.splitlines()[0][:300] if reason else "unknown"
        self.crashed = True
        if len(self.crashes) < CRASH_LIMIT:
            return None
        pause = min(300.0, 10.0 * 2.0 ** (len(self.crashes) - CRASH_LIMIT))
        self.backoff_until = now + pause
        return pause

    def check(self, model_id: str, now: float) -> None:
        """Raise EngineUnavailableError, with when to retry, while the model is paused."""
        if self.backoff_until > now:
            raise EngineUnavailableError(
                f"'{model_id}' crashed {len(self.crashes)} times recently and is paused "
                f"for {self.backoff_until - now:.0f} s more. Last error: {self.last_error}",
                retry_after=int(self.backoff_until - now) + 1,
            )


class Engines:
    """The loaded engines by model id, and the work of starting and stopping them.

    Everything runs on the event loop; loads wait on ``_changed`` for memory to free up.
    """

    def __init__(
        self,
        registry: Registry,
        start: StartFn,
        policy: Policy,
        plan: PlanFn,
        available: Callable[[], Memory],
        clock: Clock,
    ) -> None:
        self.registry = registry
        self.policy = policy
        self._start = start
        self._plan = plan
        self._available = available
        self._clock = clock
        self.slots: dict[str, Slot] = {}
        self.loading: dict[str, asyncio.Task[Slot]] = {}
        self.health: dict[str, Health] = collections.defaultdict(Health)
        # ("starts" | "crashes" | "restarts", model id) -> count, for /metrics
        self.events: collections.Counter[tuple[str, str]] = collections.Counter()
        self._changed = asyncio.Condition()
        self._load_lock = asyncio.Lock()
        self._reaper: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._idle_changed = asyncio.Event()
        self._reap_at = 0.0  # when the reaper wakes next (clock time)
        self._waiting = 0  # loads waiting for room
        self._arriving: collections.Counter[str] = collections.Counter()  # awaiting a load
        self.turns = CpuTurns(policy.cpu_cores)  # engines on the CPU take turns computing

    # -- loading ----------------------------------------------------------------------
    async def ready(self, model_id: str, task: Task | None = None) -> Slot:
        """The slot of a live engine for ``model_id``: starts one if there is none, one
        start shared by everyone asking meanwhile (and failing them all if it fails).
        A model that cannot do ``task`` is refused here, loaded or not."""
        slot = self.slots.get(model_id)
        if task is not None:
            model = slot.engine.model if slot is not None else None
            if model is None:
                model = await asyncio.to_thread(self.registry.get, model_id)
            if why := model.refusal(task):
                raise BadRequestError(why, param="model")
        if slot is not None and slot.engine.alive:
            return slot
        loading = self.loading.get(model_id)
        if loading is None:
            loading = asyncio.create_task(self._load(model_id))
            self.loading[model_id] = loading
            loading.add_done_callback(lambda _t: self.loading.pop(model_id, None))
        # Until its requests are in, a model just loaded counts as busy: another load
        # waiting for room must not stop it before they are (nor drain it: _room_for)
        self._arriving[model_id] += 1
        try:
            return await asyncio.shield(loading)
        finally:
            self._arriving[model_id] -= 1
            if self._waiting and not self._arriving[model_id]:
                self._background(self._notify())  # it may be drained now

    async def _load(self, model_id: str) -> Slot:
        health = self.health[model_id]
        health.check(model_id, self._clock.now())
        model = await asyncio.to_thread(self.registry.checked, model_id)
        async with self._load_lock:  # one placement decision at a time
            stale = self.slots.pop(model_id, None)
            if stale is not None:
                stale.send_back()
                await stale.engine.stop()
            try:
                placement, victims = await self._room_for(model)
                for victim in victims:
                    await self._unload(victim, "to make room")
            finally:  # drained models that were not needed after all, or not stopped
                for slot in self.slots.values():
                    if slot.draining:
                        slot.resume()
            try:
                engine = await self._start(model, placement)
            except EngineUnavailableError as exc:
                self._record_crash(model_id, exc.message)
                raise
        self.events["starts", model_id] += 1
        if health.crashed:
            self.events["restarts", model_id] += 1
            health.crashed = False
        layers = model.gguf.block_count if model.gguf else None
        slot = Slot(
            engine,
            placement,
            self.policy.keep_alive,
            self._clock.now(),
            parallel=self.policy.parallel_of(model_id),
            cpu=cpu_threads(engine.argv, placement, layers),
            turns=self.turns,
        )
        engine.on_exit = self._on_exit
        self.slots[model_id] = slot
        self._ensure_reaper()
        return slot

    async def _room_for(self, model: ModelInfo) -> tuple[Placement, list[str]]:
        """Wait until ``model`` can be placed: its placement and the idle models to stop.
        Meanwhile the busy models holding its memory are drained (the caller resumes
        those it does not stop)."""
        plan = functools.partial(self._plan, model)
        async with self._changed:
            while True:
                views, max_loaded = self._views(), self.policy.max_loaded
                decision = plan_load(plan, self._free(), views, max_loaded)
                if decision is not None:
                    return decision
                for mid in plan_drain(plan, self._free(), views, max_loaded):
                    if not self._arriving[mid]:
                        self.slots[mid].draining = True
                self._waiting += 1
                try:
                    await self._changed.wait()
                finally:
                    self._waiting -= 1

    def _views(self) -> list[SlotView]:
        """The loaded models as the policy sees them (requests on their way in count)."""
        return [
            SlotView(
                mid,
                s.placement.need,
                s.busy + self._arriving[mid],
                s.last_used,
                mid in self.policy.pinned,
            )
            for mid, s in self.slots.items()
        ]

    def _free(self) -> Memory:
        """Memory a new engine may take now: what is available, less the reserve and
        what the memory limits leave to the engines already loaded."""
        free = self._available() - self.policy.reserve
        ram, vram = free.ram, free.vram
        if self.policy.ram_limit:
            ram = min(
                ram, self.policy.ram_limit - sum(s.placement.need.ram for s in self.slots.values())
            )
        if self.policy.vram_limit:
            used = sum(s.placement.need.vram for s in self.slots.values())
            vram = min(vram, self.policy.vram_limit - used)
        return Memory(max(0, ram), max(0, vram))

    # -- crashes ----------------------------------------------------------------------
    def _record_crash(self, model_id: str, reason: str) -> None:
        self.events["crashes", model_id] += 1
        health = self.health[model_id]
        pause = health.record(reason, self._clock.now())
        if pause is not None:
            log.error(
                "%s crashed %d times; pausing it for %.0f s", model_id, len(health.crashes), pause
            )

    def _on_exit(self, engine: Engine) -> None:
        slot = self.slots.get(engine.model.id)
        if slot is not None and slot.engine is engine:
            del self.slots[engine.model.id]
            if engine.state is EngineState.EXITED:
                self._record_crash(engine.model.id, f"engine exited ({engine.exit_reason})")
            slot.send_back()  # queued requests ask again, and reload it
            self._background(self._notify())

    async def discard(self, engine: Engine) -> None:
        """Drop an engine that refuses connections, so that the next request starts anew.

        Usually it has died and its exit is noticed within the wait; if not (a busy box, or
        an engine that lives but no longer listens), it is stopped here and counted as a
        crash.
        """
        if await engine.wait_exited(1.0):
            return  # _on_exit has already removed and reported it
        slot = self.slots.get(engine.model.id)
        if slot is not None and slot.engine is engine:
            del self.slots[engine.model.id]
            slot.send_back()  # queued requests ask again, and restart it
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

    # -- going idle and unloading -----------------------------------------------------
    def went_idle(self, slot: Slot) -> None:
        """``slot`` has no request left: the reaper re-plans if it is due sooner than the
        reaper wakes, waiting loads look again, and under keep-alive 0 it unloads at once.
        (Called at the end of every request: it wakes nothing that need not wake.)"""
        if slot.last_used + slot.keep_alive < self._reap_at and slot.keep_alive >= 0:
            self._idle_changed.set()  # due before the reaper wakes: it must plan again
        if self._waiting:
            self._background(self._notify())
        if slot.keep_alive == 0 and slot.model_id not in self.policy.pinned:
            self._background(self._unload_if_idle(slot))

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` as a task kept referenced until it finishes."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _unload(self, model_id: str, why: str) -> None:
        slot = self.slots.pop(model_id, None)
        if slot is not None:
            log.info("unloading %s %s", model_id, why)
            slot.send_back()
            await slot.engine.stop()
            await self._notify()

    async def _unload_if_idle(self, slot: Slot) -> None:
        if self.slots.get(slot.model_id) is slot and not slot.busy:
            await self._unload(slot.model_id, "(keep-alive 0)")

    async def unload(self, model_id: str) -> bool:
        """Stop the engine of ``model_id`` if it runs; True when one was stopped."""
        if model_id not in self.slots:
            return False
        await self._unload(model_id, "on request")
        return True

    async def unload_changed(self, paths: set[Path]) -> list[str]:
        """Unload the models whose files among ``paths`` were removed or replaced."""
        gone = []
        for model_id, slot in list(self.slots.items()):
            model = slot.engine.model
            if paths.isdisjoint(model.files):
                continue
            try:
                size = sum(p.stat().st_size for p in model.files)  # parts, projector: all
                changed = (size, model.path.stat().st_mtime) != (model.size, model.mtime)
            except OSError:
                changed = True
            if changed and self.slots.get(model_id) is slot:
                await self._unload(model_id, "because its file was removed or replaced")
                gone.append(model_id)
        return gone

    def _ensure_reaper(self) -> None:
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.get_running_loop().create_task(self._reap())

    async def _reap(self) -> None:
        """Unload idle models whose keep-alive ran out; waits until the next one is due."""
        while self.slots:
            self._idle_changed.clear()
            self._reap_at = math.inf  # models going idle while it unloads wake it again
            now = self._clock.now()
            due = []
            wake = 30.0
            for mid, s in list(self.slots.items()):
                pinned = mid in self.policy.pinned
                if expired(s.busy, s.last_used, s.keep_alive, pinned, now):
                    due.append((mid, s))
                elif not s.busy and s.keep_alive >= 0 and not pinned:
                    wake = min(wake, s.last_used + s.keep_alive - now)
            for mid, s in due:
                if self.slots.get(mid) is s and not s.busy:
                    await self._unload(mid, "after its keep-alive")
            self._reap_at = now + max(0.05, wake)
            await self._clock.wait(self._idle_changed, max(0.05, wake))
        self._reap_at = 0.0

    async def close(self) -> None:
        """Stop every engine (and any load in progress)."""
        if self._reaper is not None:
            self._reaper.cancel()
        for task in list(self.loading.values()):
            task.cancel()
        await asyncio.gather(*self.loading.values(), return_exceptions=True)
        await asyncio.gather(*(s.engine.stop() for s in self.slots.values()))
        self.slots.clear()
