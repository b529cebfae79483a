"""The scheduler without an engine: its decisions in tables, and its behaviour with fake
engines on a manual clock — fit and evict, queue order, keep-alive, pinning, one load per
model, failed loads, crash backoff. ``test_scheduler_real_engine.py`` runs it for real."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from offgrid.engine.process import EngineState
from offgrid.errors import EngineUnavailableError, InsufficientMemoryError, OverloadedError
from offgrid.models.registry import ModelInfo
from offgrid.placement import Memory, Placement
from offgrid.scheduler import Policy, Scheduler, SlotView, expired, plan_eviction, plan_load

GB = 1024**3


def ram(gib: float) -> Memory:
    return Memory(int(gib * GB))


def view(
    mid: str,
    mem: float,
    active: int = 0,
    used: float = 0.0,
    pinned: bool = False,
    vram: float = 0.0,
) -> SlotView:
    return SlotView(mid, Memory(int(mem * GB), int(vram * GB)), active, used, pinned)


@pytest.mark.parametrize(
    ("need", "available", "loaded", "max_loaded", "expect"),
    [
        (1, 10, [], 3, []),  # fits
        (1, 10, [view("a", 1), view("b", 1), view("c", 1)], 3, ["a"]),  # count cap: evict LRU
        (3, 1, [view("a", 2, used=5), view("b", 2, used=3)], 3, ["b"]),  # memory: LRU first
        (4, 1, [view("a", 2, used=5), view("b", 2, used=3)], 3, ["b", "a"]),  # both needed
        (3, 1, [view("a", 2, used=1, active=1), view("b", 2, used=3)], 3, ["b"]),  # busy kept
        (4, 1, [view("a", 2, active=1), view("b", 2)], 3, None),  # must wait for a
        (3, 1, [view("a", 2, pinned=True), view("b", 2)], 3, ["b"]),  # pinned kept
        (1, 10, [view("a", 1, active=1)], 1, None),  # cap reached by a busy model: wait
    ],
)
def test_plan_eviction(
    need: float, available: float, loaded: list[SlotView], max_loaded: int, expect: object
) -> None:
    assert plan_eviction(ram(need), ram(available), loaded, max_loaded) == expect
    fixed = lambda budget: Placement(0, ram(need))  # noqa: E731
    planned = plan_load(fixed, ram(available), loaded, max_loaded)
    assert (planned[1] if planned else None) == expect


def test_a_model_too_big_even_alone_says_how_much_it_needs() -> None:
    eight = lambda budget: Placement(0, ram(8))  # noqa: E731
    with pytest.raises(InsufficientMemoryError, match=r"needs about 8\.0 GiB.*at most 5\.0 GiB"):
        plan_load(eight, ram(3), [view("a", 2), view("p", 4, pinned=True)], 3)


def layers_that_fit(per_layer: float, layers: int) -> Callable[[Memory], Placement]:
    """A model of ``layers`` GPU layers of ``per_layer`` GiB each, placed like ``place``."""

    def plan(budget: Memory) -> Placement:
        n = min(layers, int(budget.vram / (per_layer * GB)))
        return Placement(n, Memory(int((layers - n) * per_layer * GB), int(n * per_layer * GB)))

    return plan


@pytest.mark.parametrize(
    ("free_vram", "loaded", "gpu_layers", "victims"),
    [
        (10, [], 4, []),  # the GPU holds it all
        (2, [], 2, []),  # half of it: the rest in RAM, nobody stopped
        (2, [view("a", 1, vram=2, used=1), view("b", 1, vram=2, used=2)], 4, ["a"]),
        (0, [view("a", 1, vram=4, used=1), view("b", 1, vram=4, used=2)], 4, ["a"]),
        (0, [view("a", 1, vram=4, active=1)], 0, []),  # a is busy: start on the CPU now
        (0, [view("a", 1, vram=4, pinned=True)], 0, []),  # pinned: never stopped for room
        (1, [view("a", 1, vram=2, used=1), view("b", 1, vram=2, used=2)], 4, ["a", "b"]),
    ],
)
def test_plan_load_stops_idle_models_for_gpu_layers_only_as_needed(
    free_vram: float, loaded: list[SlotView], gpu_layers: int, victims: list[str]
) -> None:
    planned = plan_load(layers_that_fit(1, 4), Memory(100 * GB, free_vram * GB), loaded, 3)
    assert planned is not None
    assert (planned[0].gpu_layers, planned[1]) == (gpu_layers, victims)


def test_plan_load_waits_for_a_busy_model_only_when_nothing_else_can_fit() -> None:
    nine = lambda budget: Placement(0, ram(9))  # noqa: E731
    assert plan_load(nine, ram(5), [view("a", 6, active=1)], 3) is None
    with pytest.raises(InsufficientMemoryError):
        plan_load(nine, ram(2), [view("a", 6, active=1)], 3)


@pytest.mark.parametrize(
    ("active", "idle_for", "keep_alive", "pinned", "expect"),
    [
        (0, 10, 5, False, True),
        (0, 4, 5, False, False),
        (1, 100, 5, False, False),  # busy
        (0, 0, 0, False, True),  # keep-alive 0: at once
        (0, 1e9, -1, False, False),  # -1: never
        (0, 1e9, 5, True, False),  # pinned: never
    ],
)
def test_expired(
    active: int, idle_for: float, keep_alive: float, pinned: bool, expect: bool
) -> None:
    assert expired(active, 100.0, keep_alive, pinned, 100.0 + idle_for) is expect


class FakeEngine:
    """Stands in for ``Engine``: ready at once, stopped on request, no process."""

    def __init__(self, model: ModelInfo) -> None:
        self.model = model
        self.alive = True
        self.state = EngineState.READY
        self.pid, self.port, self.started_at = 1, 2, 0.0
        self.argv: list[str] = []
        self.on_exit: Any = None
        self.exit_reason = ""

        self.proc: Any = None

    async def stop(self, grace: float = 5.0) -> None:
        self.alive = False
        self.state = EngineState.STOPPED

    async def wait_exited(self, timeout: float) -> bool:
        return not self.alive


class FakeRegistry:
    def checked(self, model_id: str) -> ModelInfo:
        return ModelInfo(model_id, Path(f"/m/{model_id}.gguf"), GB, 0.0, None)


class ManualClock:
    """The scheduler's clock for tests: time moves only when ``advance()`` says so."""

    def __init__(self) -> None:
        self.t = 0.0
        self._timers: dict[asyncio.Future[None], float] = {}

    def now(self) -> float:
        return self.t

    @property
    def deadlines(self) -> list[float]:
        """When the waits in progress give up."""
        return sorted(self._timers.values())

    async def wait(self, event: asyncio.Event, timeout: float) -> bool:
        timer: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._timers[timer] = self.t + timeout
        is_set = asyncio.ensure_future(event.wait())
        try:
            await asyncio.wait({timer, is_set}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            del self._timers[timer]
            is_set.cancel()
        return event.is_set()

    def advance(self, seconds: float) -> None:
        self.t += seconds
        for timer, deadline in self._timers.items():
            if deadline <= self.t and not timer.done():
                timer.set_result(None)


async def until(predicate: Callable[[], object], what: str, timeout: float = 2.0) -> None:
    """Let the event loop run until ``predicate()`` holds; fail after ``timeout`` real s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.001)


def make(
    fail: bool = False,
    available: Callable[[], Memory] = lambda: ram(100),
    clock: ManualClock | None = None,
    start_s: float = 0.0,
    threads: int = 0,
    **policy: Any,
) -> tuple[Scheduler, list[str]]:
    """A scheduler over fake engines (each started with ``threads``, if given)."""
    starts: list[str] = []

    async def start(model: ModelInfo, placement: Placement) -> Any:
        starts.append(model.id)
        await asyncio.sleep(start_s)  # an engine that takes a while to load
        if fail:
            raise EngineUnavailableError(f"cannot load {model.id}")
        engine = FakeEngine(model)
        engine.argv = ["--threads", str(threads)] if threads else []
        return engine

    registry: Any = FakeRegistry()
    sched = Scheduler(registry, start, policy=Policy(**policy), available=available, clock=clock)
    return sched, starts


def test_concurrent_requests_for_a_cold_model_load_it_once() -> None:
    async def main() -> None:
        sched, starts = make(parallel=10)
        leases = await asyncio.gather(*(sched.acquire("a") for _ in range(10)))
        assert starts == ["a"]
        assert len({id(lease.engine) for lease in leases}) == 1
        assert sched.status()[0]["active_requests"] == 10
        await sched.close()

    asyncio.run(main())


def test_a_failed_load_fails_every_waiter_with_its_reason() -> None:
    async def main() -> None:
        sched, starts = make(fail=True)
        results = await asyncio.gather(
            *(sched.acquire("a") for _ in range(3)), return_exceptions=True
        )
        assert starts == ["a"]
        assert all(
            isinstance(r, EngineUnavailableError) and "cannot load a" in str(r) for r in results
        )

    asyncio.run(main())


def test_repeated_failures_back_off_and_say_why() -> None:
    async def main() -> None:
        clock = ManualClock()
        sched, starts = make(fail=True, clock=clock)
        for _ in range(3):
            with pytest.raises(EngineUnavailableError):
                await sched.acquire("a")
        with pytest.raises(EngineUnavailableError, match="paused"):
            await sched.acquire("a")
        assert len(starts) == 3
        [row] = sched.status()
        assert row["state"] == "backoff" and "cannot load a" in str(row["last_error"])
        clock.advance(10)  # the first pause is over: the next request tries again
        with pytest.raises(EngineUnavailableError, match="cannot load a"):
            await sched.acquire("a")
        assert len(starts) == 4

    asyncio.run(main())


def test_swap_waits_for_in_flight_requests() -> None:
    async def main() -> None:
        probes = 0

        def available() -> Memory:
            nonlocal probes
            probes += 1
            return ram(100)

        sched, starts = make(max_loaded=1, available=available)
        lease_a = await sched.acquire("a")
        b = asyncio.create_task(sched.acquire("b"))
        await until(lambda: probes >= 2, "b's load to find no room and wait")
        assert not b.done() and lease_a.engine.alive  # a is busy: not evicted
        lease_a.release()
        lease_b = await asyncio.wait_for(b, 2)
        assert not lease_a.engine.alive and lease_b.engine.alive
        assert starts == ["a", "b"] and list(sched.loaded()) == ["b"]
        await sched.close()

    asyncio.run(main())


def test_a_model_in_steady_demand_is_drained_for_one_that_waits() -> None:
    async def main() -> None:
        sched, starts = make(max_loaded=1, parallel=2)
        first = await sched.acquire("a")
        b = asyncio.create_task(sched.acquire("b"))
        await until(lambda: sched.status()[0].get("draining"), "a to be drained for b")
        later = asyncio.create_task(sched.acquire("a"))  # a place is free, but a drains
        await until(lambda: sched.status()[0]["queued_requests"] == 1, "a's new request queued")
        assert not b.done() and not later.done()
        first.release()  # a finishes what ran: it stops, b loads, a's queue asks again
        lease_b = await asyncio.wait_for(b, 2)
        assert not first.engine.alive and not later.done()
        lease_b.release()  # now b is drained for a's waiting request
        (await asyncio.wait_for(later, 2)).release()
        assert starts == ["a", "b", "a"]
        await sched.close()

    asyncio.run(main())


def test_a_model_swapped_in_serves_its_requests_before_it_can_be_swapped_out() -> None:
    async def main() -> None:
        sched, starts = make(max_loaded=1, parallel=2, start_s=0.05)
        first = await sched.acquire("a")
        b = asyncio.create_task(sched.acquire("b"))
        await until(lambda: sched.status()[0].get("draining"), "a to be drained for b")
        later = asyncio.create_task(sched.acquire("a"))
        await until(lambda: sched.status()[0]["queued_requests"] == 1, "a's new request queued")
        first.release()  # b loads while a's queued request waits to reload a
        lease_b = await asyncio.wait_for(b, 2)
        assert lease_b.engine.alive, "b was stopped for a before its request got in"
        lease_b.release()
        (await asyncio.wait_for(later, 2)).release()
        assert starts == ["a", "b", "a"]
        await sched.close()

    asyncio.run(main())


def test_a_drained_model_admits_again_when_the_waiting_one_finds_room() -> None:
    async def main() -> None:
        room = [ram(1.5)]  # memory free on the machine
        sched, starts = make(available=lambda: room[0], reserve=Memory(), parallel=3)
        first, second = await sched.acquire("a"), await sched.acquire("a")
        room[0] = ram(0.5)  # a took 1 GiB: b does not fit beside it
        b = asyncio.create_task(sched.acquire("b"))
        await until(lambda: sched.status()[0].get("draining"), "a to be drained for b")
        later = [asyncio.create_task(sched.acquire("a")) for _ in range(2)]
        await until(lambda: sched.status()[0]["queued_requests"] == 2, "a's new requests queued")
        room[0] = ram(4)  # until another program frees memory
        first.release()
        second.release()  # a is idle: b's load looks again, and now fits beside a
        (await asyncio.wait_for(b, 2)).release()
        for lease in await asyncio.wait_for(asyncio.gather(*later), 2):  # both get in
            lease.release()
        assert first.engine.alive and starts == ["a", "b"]
        assert not any(row.get("draining") for row in sched.status())
        await sched.close()

    asyncio.run(main())


def test_queue_is_bounded_and_served_in_arrival_order() -> None:
    async def main() -> None:
        sched, _ = make(parallel=1, max_queue=2)
        first = await sched.acquire("a")
        order: list[int] = []

        async def waiter(i: int) -> None:
            lease = await sched.acquire("a")
            order.append(i)
            lease.release()

        tasks = [asyncio.create_task(waiter(i)) for i in range(2)]
        await until(lambda: sched.status()[0]["queued_requests"] == 2, "two queued requests")
        with pytest.raises(OverloadedError) as err:
            await sched.acquire("a")
        assert err.value.status == 429 and err.value.headers()["Retry-After"]
        assert sched.status()[0]["queued_requests"] == 2
        first.release()
        await asyncio.gather(*tasks)
        assert order == [0, 1]
        await sched.close()

    asyncio.run(main())


def test_a_waiter_that_leaves_frees_its_place() -> None:
    async def main() -> None:
        sched, _ = make(parallel=1, max_queue=1)
        first = await sched.acquire("a")
        leaving = asyncio.create_task(sched.acquire("a"))
        await until(lambda: sched.status()[0]["queued_requests"] == 1, "a queued request")
        leaving.cancel()
        await until(lambda: sched.status()[0]["queued_requests"] == 0, "the waiter to leave")
        staying = asyncio.create_task(sched.acquire("a"))  # the place is free again
        await until(lambda: sched.status()[0]["queued_requests"] == 1, "a queued request")
        assert not staying.done()
        first.release()
        (await asyncio.wait_for(staying, 1)).release()
        await sched.close()

    asyncio.run(main())


def test_keep_alive_zero_unloads_when_idle_and_pinned_stays() -> None:
    async def main() -> None:
        sched, _ = make(keep_alive=0, pinned=frozenset({"p"}))
        (await sched.acquire("a")).release()
        (await sched.acquire("p")).release()
        await until(lambda: "a" not in sched.loaded(), "a to unload")
        assert list(sched.loaded()) == ["p"]
        await sched.close()

    asyncio.run(main())


def test_keep_alive_timer_unloads_idle_model() -> None:
    async def main() -> None:
        clock = ManualClock()
        sched, _ = make(keep_alive=10, clock=clock)
        (await sched.acquire("a", keep_alive=-1)).release()  # per request: never
        clock.advance(1)
        (await sched.acquire("b")).release()  # the server's keep-alive: 10 s
        await until(  # it wakes by then (it is not woken for each request that ends)
            lambda: clock.deadlines and max(clock.deadlines) <= 11.0,
            "the reaper to wait no later than b's keep-alive",
        )
        clock.advance(10)
        await until(lambda: "b" not in sched.loaded(), "b to unload")
        assert list(sched.loaded()) == ["a"]
        await sched.close()

    asyncio.run(main())


def test_dead_engine_is_restarted_on_next_acquire() -> None:
    async def main() -> None:
        sched, starts = make()
        lease = await sched.acquire("a")
        lease.release()
        lease.release()  # idempotent
        lease.engine.alive = False
        await sched.acquire("a")
        assert starts == ["a", "a"]
        await sched.close()

    asyncio.run(main())


def test_an_engine_that_refuses_connections_is_discarded_and_restarted() -> None:
    async def main() -> None:
        sched, starts = make()
        lease = await sched.acquire("a")
        lease.release()
        await sched.discard(lease.engine)  # alive, but not listening any more
        assert not lease.engine.alive and "a" not in sched.loaded()
        await sched.acquire("a")
        assert starts == ["a", "a"]
        await sched.close()

    asyncio.run(main())


def test_a_gpu_memory_limit_shares_the_gpu_between_models() -> None:
    """OFFGRID_GPU_MEMORY: 6 GiB for engines on a GPU with 80 GiB free. A model of four
    2 GiB layers gets three layers; a second one evicts the idle first to get as many;
    while the first is busy, the second starts at once with what the limit leaves."""

    async def main() -> None:
        started: list[tuple[str, int]] = []

        async def start(model: ModelInfo, placement: Placement) -> Any:
            started.append((model.id, placement.gpu_layers))
            return FakeEngine(model)

        plan = layers_that_fit(2, 4)
        registry: Any = FakeRegistry()
        sched = Scheduler(
            registry,
            start,
            policy=Policy(vram_limit=6 * GB, reserve=Memory()),
            plan=lambda _model, budget: plan(budget),
            available=lambda: Memory(100 * GB, 80 * GB),
        )
        (await sched.acquire("a")).release()
        assert started == [("a", 3)]
        (await sched.acquire("b")).release()
        assert started[-1] == ("b", 3)
        assert [r["id"] for r in sched.status()] == ["b"]
        busy = await sched.acquire("b")
        (await sched.acquire("a")).release()
        assert started[-1] == ("a", 0)  # b is serving: a runs on the CPU beside it
        assert sorted(r["id"] for r in sched.status()) == ["a", "b"]
        assert {r["id"]: r["vram_bytes"] for r in sched.status()} == {"a": 0, "b": 6 * GB}
        busy.release()
        await sched.close()

    asyncio.run(main())
