"""Scheduler decisions without an engine: fit and evict, queue order, keep-alive, pinning,
one load per model, failed loads, crash backoff."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from offgrid.errors import EngineUnavailableError, InsufficientMemoryError, OverloadedError
from offgrid.models.registry import ModelInfo
from offgrid.scheduler import Policy, Scheduler, SlotView, expired, plan_eviction

GB = 1024**3


def view(
    mid: str, mem: float, active: int = 0, used: float = 0.0, pinned: bool = False
) -> SlotView:
    return SlotView(mid, int(mem * GB), active, used, pinned)


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
    assert plan_eviction(int(need * GB), int(available * GB), loaded, max_loaded, 0) == expect


def test_a_model_too_big_even_alone_says_how_much_it_needs() -> None:
    with pytest.raises(InsufficientMemoryError, match=r"needs about 8\.0 GiB.*at most 5\.0 GiB"):
        plan_eviction(8 * GB, 3 * GB, [view("a", 2), view("p", 4, pinned=True)], 3, 0)


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
    def __init__(self, model: ModelInfo) -> None:
        self.model = model
        self.alive = True
        self.state = "ready"
        self.pid, self.port, self.started_at = 1, 2, 0.0
        self.on_exit: Any = None
        self.exit_reason = ""

        self.proc: Any = None

    async def stop(self, grace: float = 5.0) -> None:
        self.alive = False
        self.state = "stopped"

    async def wait_exited(self, timeout: float) -> bool:
        return not self.alive


class FakeRegistry:
    def get(self, model_id: str) -> ModelInfo:
        return ModelInfo(model_id, Path(f"/m/{model_id}.gguf"), GB, 0.0, None)


def make(fail: bool = False, **policy: Any) -> tuple[Scheduler, list[str]]:
    starts: list[str] = []

    async def start(model: ModelInfo) -> Any:
        starts.append(model.id)
        await asyncio.sleep(0.02)
        if fail:
            raise EngineUnavailableError(f"cannot load {model.id}")
        return FakeEngine(model)

    registry: Any = FakeRegistry()
    return Scheduler(registry, start, policy=Policy(**policy), available=lambda: 100 * GB), starts


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
        sched, starts = make(fail=True)
        for _ in range(3):
            with pytest.raises(EngineUnavailableError):
                await sched.acquire("a")
        with pytest.raises(EngineUnavailableError, match="paused"):
            await sched.acquire("a")
        assert len(starts) == 3
        [row] = sched.status()
        assert row["state"] == "backoff" and "cannot load a" in str(row["last_error"])

    asyncio.run(main())


def test_swap_waits_for_in_flight_requests() -> None:
    async def main() -> None:
        sched, starts = make(max_loaded=1)
        lease_a = await sched.acquire("a")
        b = asyncio.create_task(sched.acquire("b"))
        await asyncio.sleep(0.1)
        assert not b.done() and lease_a.engine.alive  # a is busy: not evicted
        lease_a.release()
        lease_b = await asyncio.wait_for(b, 2)
        assert not lease_a.engine.alive and lease_b.engine.alive
        assert starts == ["a", "b"] and list(sched.loaded()) == ["b"]
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
        await asyncio.sleep(0.05)
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
        await asyncio.sleep(0.05)
        leaving.cancel()
        await asyncio.sleep(0)
        staying = asyncio.create_task(sched.acquire("a"))  # the place is free again
        await asyncio.sleep(0.05)
        assert sched.status()[0]["queued_requests"] == 1
        first.release()
        (await asyncio.wait_for(staying, 1)).release()
        await sched.close()

    asyncio.run(main())


def test_keep_alive_zero_unloads_when_idle_and_pinned_stays() -> None:
    async def main() -> None:
        sched, _ = make(keep_alive=0, pinned=frozenset({"p"}))
        (await sched.acquire("a")).release()
        (await sched.acquire("p")).release()
        for _ in range(50):
            if "a" not in sched.loaded():
                break
            await asyncio.sleep(0.01)
        assert list(sched.loaded()) == ["p"]
        await sched.close()

    asyncio.run(main())


def test_keep_alive_timer_unloads_idle_model() -> None:
    async def main() -> None:
        sched, _ = make(keep_alive=0.1)
        (await sched.acquire("a", keep_alive=-1)).release()  # per request: never
        (await sched.acquire("b")).release()
        await asyncio.sleep(0.4)
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
