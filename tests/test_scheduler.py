"""Scheduler decisions without an engine: one load per model, swaps, failed loads."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from offgrid.errors import EngineUnavailableError
from offgrid.models.registry import ModelInfo
from offgrid.scheduler import Scheduler, _Slot, pick_victim


class FakeEngine:
    def __init__(self, model: ModelInfo) -> None:
        self.model = model
        self.alive = True
        self.state = "ready"
        self.pid, self.port, self.started_at = 1, 2, 0.0
        self.on_exit: Any = None

    async def stop(self) -> None:
        self.alive = False
        self.state = "stopped"


class FakeRegistry:
    def get(self, model_id: str) -> ModelInfo:
        return ModelInfo(model_id, Path(f"/m/{model_id}.gguf"), 1, 0.0, None)


def make(max_loaded: int = 1, fail: bool = False) -> tuple[Scheduler, list[str]]:
    starts: list[str] = []

    async def start(model: ModelInfo) -> Any:
        starts.append(model.id)
        await asyncio.sleep(0.05)
        if fail:
            raise EngineUnavailableError(f"cannot load {model.id}")
        return FakeEngine(model)

    reg: Any = FakeRegistry()
    sched = Scheduler(reg, start, max_loaded=max_loaded)
    return sched, starts


@pytest.mark.parametrize(
    ("slots", "victim"),
    [
        ({}, None),
        ({"a": (1, 5.0)}, None),
        ({"a": (0, 5.0), "b": (0, 3.0)}, "b"),
        ({"a": (0, 5.0), "b": (2, 3.0)}, "a"),
        ({"a": (1, 5.0), "b": (2, 3.0)}, None),
    ],
)
def test_pick_victim_is_least_recently_used_idle(
    slots: dict[str, tuple[int, float]], victim: str | None
) -> None:
    table: Any = {
        mid: _Slot(engine=None, active=active, last_used=used)  # type: ignore[arg-type]
        for mid, (active, used) in slots.items()
    }
    assert pick_victim(table) == victim


def test_concurrent_requests_for_a_cold_model_load_it_once() -> None:
    async def main() -> None:
        sched, starts = make()
        leases = await asyncio.gather(*(sched.acquire("a") for _ in range(10)))
        assert starts == ["a"]
        assert len({id(lease.engine) for lease in leases}) == 1
        assert sched.status()[0]["active_requests"] == 10

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


def test_swap_waits_for_in_flight_requests() -> None:
    async def main() -> None:
        sched, starts = make(max_loaded=1)
        lease_a = await sched.acquire("a")
        b = asyncio.create_task(sched.acquire("b"))
        await asyncio.sleep(0.2)
        assert not b.done() and lease_a.engine.alive  # a is busy: not evicted
        lease_a.release()
        lease_b = await asyncio.wait_for(b, 2)
        assert not lease_a.engine.alive and lease_b.engine.alive
        assert starts == ["a", "b"] and list(sched.loaded()) == ["b"]

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

    asyncio.run(main())
