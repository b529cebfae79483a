"""Engines on the CPU take turns (scheduler/cpu_turns.py): two engines whose threads would
outnumber the cores do not compute at once; fake engines, so the order is exact."""

from __future__ import annotations

import asyncio
from asyncio import Task

import pytest

from offgrid.placement import Memory, Placement
from offgrid.scheduler import Scheduler
from offgrid.scheduler.cpu_turns import cpu_threads
from offgrid.scheduler.queues import Lease
from test_scheduler_unit import make, until


def row(sched: Scheduler, model_id: str) -> dict[str, object]:
    """``model_id``'s row in /api/ps ({} while there is none)."""
    return next((r for r in sched.status() if r["id"] == model_id), {})


@pytest.mark.parametrize(
    ("argv", "gpu_layers", "layers", "threads"),
    [
        (["--threads", "2"], 0, 30, 2),
        (["-t", "2", "--threads-batch", "4"], 0, 30, 4),  # prompts take the batch threads
        (["--threads", "2"], 12, 30, 2),  # layers left on the CPU: it computes there
        (["--threads", "2"], 30, 30, 2),  # the output layer on the CPU
        (["--threads", "2"], 31, 30, 0),  # all on the GPU: it takes no turn
        (["--threads=3"], 0, 30, 3),
        (["--threads", "2", "--threads", "1", "-tb", "1"], 0, 30, 1),  # tuned flags come last
        ([], 0, 30, 0),  # no count named: nothing to go by
    ],
)
def test_cpu_threads(argv: list[str], gpu_layers: int, layers: int, threads: int) -> None:
    assert cpu_threads(argv, Placement(gpu_layers, Memory()), layers) == threads


async def a_computes_b_waits(sched: Scheduler) -> tuple[Lease, Task[Lease], Task[Lease]]:
    """a runs a request, b asks and waits for the CPU, so a's next request queues although
    a has free slots: (a's lease, b's request, a's next request)."""
    a1 = await sched.acquire("a")
    b = asyncio.create_task(sched.acquire("b"))
    await until(lambda: row(sched, "b").get("waiting_for_cpu"), "b to wait for the CPU")
    a2 = asyncio.create_task(sched.acquire("a"))
    await until(lambda: row(sched, "a")["queued_requests"] == 1, "a's next request queued")
    return a1, b, a2


def test_engines_that_would_share_the_cores_take_turns() -> None:
    async def main() -> None:
        sched, _ = make(parallel=4, threads=2, cpu_cores=2)
        a1, b, a2 = await a_computes_b_waits(sched)
        a1.release()  # a is idle: b's turn, then a's
        lease_b = await asyncio.wait_for(b, 1)
        await asyncio.sleep(0.01)
        assert not a2.done() and row(sched, "a")["waiting_for_cpu"]
        lease_b.release()
        (await asyncio.wait_for(a2, 1)).release()
        assert not any(r["waiting_for_cpu"] for r in sched.status())
        await sched.close()

    asyncio.run(main())


def test_a_model_given_its_turn_admits_its_whole_queue() -> None:
    async def main() -> None:
        sched, _ = make(parallel=4, threads=2, cpu_cores=2)
        (await sched.acquire("b")).release()  # b loaded, then idle
        a = await sched.acquire("a")
        bs = [asyncio.create_task(sched.acquire("b")) for _ in range(3)]
        await until(lambda: row(sched, "b")["queued_requests"] == 3, "three b requests queued")
        a.release()
        leases = await asyncio.wait_for(asyncio.gather(*bs), 1)  # all three at once
        assert row(sched, "b")["active_requests"] == 3
        for lease in leases:
            lease.release()
        await sched.close()

    asyncio.run(main())


def test_engines_whose_threads_fit_the_cores_run_side_by_side() -> None:
    async def main() -> None:
        sched, _ = make(parallel=2, threads=1, cpu_cores=2)
        a, b = await sched.acquire("a"), await asyncio.wait_for(sched.acquire("b"), 1)
        assert row(sched, "a")["cpu_threads"] == 1 and not row(sched, "b")["waiting_for_cpu"]
        c = asyncio.create_task(sched.acquire("c"))  # a third thread: no room beside them
        await until(lambda: row(sched, "c").get("waiting_for_cpu"), "c to wait")
        a.release()
        (await asyncio.wait_for(c, 1)).release()
        b.release()
        await sched.close()

    asyncio.run(main())


def test_without_turns_engines_compute_at_once() -> None:
    async def main() -> None:
        sched, _ = make(parallel=2, threads=2, cpu_cores=0)  # OFFGRID_CPU_TURNS=false
        a, b = await sched.acquire("a"), await asyncio.wait_for(sched.acquire("b"), 1)
        a.release()
        b.release()
        await sched.close()

    asyncio.run(main())


def test_a_model_whose_clients_leave_gives_its_turn_back() -> None:
    async def main() -> None:
        sched, _ = make(parallel=4, threads=2, cpu_cores=2)
        a1, b, a2 = await a_computes_b_waits(sched)
        b.cancel()  # b's client goes away: nobody waits, a admits again
        (await asyncio.wait_for(a2, 1)).release()
        assert not row(sched, "b")["waiting_for_cpu"]
        a1.release()
        await sched.close()

    asyncio.run(main())


def test_a_model_stopped_while_it_waits_for_the_cpu_passes_the_turn_on() -> None:
    async def main() -> None:
        sched, _ = make(parallel=4, threads=2, cpu_cores=2)
        a1, b, a2 = await a_computes_b_waits(sched)
        assert await sched.unload("b")  # nobody waits now: a admits its request
        lease_a2 = await asyncio.wait_for(a2, 1)
        await until(lambda: row(sched, "b").get("waiting_for_cpu"), "b, sent back, to wait again")
        a1.release()
        lease_a2.release()
        (await asyncio.wait_for(b, 1)).release()
        await sched.close()

    asyncio.run(main())


def test_a_model_queued_for_the_cpu_is_not_idle() -> None:
    """Neither evicted for another model (whose queue would then reload it, and evict the
    other...) nor unloaded by keep-alive 0 while its queue waits for the CPU."""

    async def main() -> None:
        sched, starts = make(parallel=4, threads=2, cpu_cores=2, max_loaded=2)
        a1 = await sched.acquire("a")
        b1 = asyncio.create_task(sched.acquire("b", keep_alive=0))
        await until(lambda: row(sched, "b").get("waiting_for_cpu"), "b to wait for the CPU")
        c = asyncio.create_task(sched.acquire("c"))  # no room: a and b are both busy
        await asyncio.sleep(0.05)
        assert starts == ["a", "b"] and not c.done()  # b was not evicted as idle
        a1.release()  # b's turn; a, idle, makes room for c, which waits for the CPU
        lease_b = await asyncio.wait_for(b1, 1)
        await until(lambda: row(sched, "c").get("waiting_for_cpu"), "c to wait for the CPU")
        b2 = asyncio.create_task(sched.acquire("b", keep_alive=0))
        await until(lambda: row(sched, "b")["queued_requests"] == 1, "b's next request queued")
        lease_b.release()  # c's turn; b's queue waits behind it: b is not unloaded
        lease_c = await asyncio.wait_for(c, 1)
        assert row(sched, "b")["waiting_for_cpu"]
        lease_c.release()
        (await asyncio.wait_for(b2, 1)).release()
        assert starts == ["a", "b", "c"]
        await sched.close()

    asyncio.run(main())


def test_loading_a_model_takes_no_turn_on_the_cpu() -> None:
    async def main() -> None:
        sched, starts = make(parallel=4, threads=2, cpu_cores=2)
        a1 = await sched.acquire("a")
        await asyncio.wait_for(sched.load("b"), 1)  # POST /api/models/b/load, while a runs
        assert starts == ["a", "b"] and not row(sched, "b")["waiting_for_cpu"]
        (await asyncio.wait_for(sched.acquire("a"), 1)).release()  # a still admits
        a1.release()
        await sched.close()

    asyncio.run(main())
