"""Requests on one loaded engine: at most ``parallel`` run, up to ``max_queue`` more wait
their turn in arrival order, and each running one holds a ``Lease`` until it is done.

A slot that is *draining* (another model waits for its memory) admits nothing new: its
running requests finish, it goes idle and is stopped, and those still waiting are sent
back (``SentBack``) to ask again, which loads the model anew in its turn. Engines on the
CPU also take turns computing (``cpu_turns``)."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from dataclasses import dataclass, field

from offgrid.engine.process import Engine
from offgrid.errors import OverloadedError
from offgrid.placement import Placement
from offgrid.scheduler.cpu_turns import CpuTurns

__all__ = ["Lease", "SentBack", "Slot"]


class SentBack(Exception):
    """A queued request's engine was stopped before its turn came: ask for it again."""


@dataclass(eq=False)  # a slot is itself (CpuTurns keeps them in a set)
class Slot:
    """A loaded engine and its requests: ``active`` running, ``waiters`` queued in order."""

    engine: Engine
    placement: Placement
    keep_alive: float
    last_used: float
    parallel: int = 1
    cpu: int = 0  # the cores it computes on (cpu_turns.cpu_threads); 0: takes no turn
    turns: CpuTurns = field(default_factory=lambda: CpuTurns(0))
    active: int = 0
    waiters: collections.deque[asyncio.Future[None]] = field(default_factory=collections.deque)
    draining: bool = False  # another model waits for this one's memory: admit nothing new

    @property
    def model_id(self) -> str:
        return self.engine.model.id

    @property
    def busy(self) -> int:
        """Requests running or queued to run here: a model whose queue waits for the CPU is
        not idle (not to be evicted or reaped), one draining is (its queue is sent back)."""
        return self.active + (0 if self.draining else len(self.waiters))

    async def enter(self, max_queue: int) -> None:
        """Take a place among the ``parallel`` running, after waiting for one if all are
        taken, the slot drains or another engine has the CPU's turn; OverloadedError (429)
        when ``max_queue`` requests wait already. A place handed to a waiter is counted
        when handed, so that nobody arriving meanwhile takes it."""
        free = self.active < self.parallel and not self.draining and not self.waiters
        if free and self.turns.admits(self):
            self._take()
        else:
            await self._wait_turn(max_queue)

    def leave(self) -> None:
        """A request is done: its place goes to the first waiter (or, the last one done,
        the CPU's turn to the next model in line)."""
        self.active -= 1
        if self.active == 0 and self in self.turns.computing:
            self.turns.idle(self)
        else:
            self.admit()

    def resume(self) -> None:
        """Stop draining (the waiting model found room elsewhere): admit the waiters."""
        self.draining = False
        self.admit()

    def send_back(self) -> None:
        """The engine is stopped or gone: every waiter asks again (and reloads it)."""
        for turn in self.waiters:
            if not turn.done():
                turn.set_exception(SentBack())
        self.waiters.clear()
        self.turns.forget(self)

    def admit(self) -> None:
        """Give the free places to the first waiters still waiting, all at once (requests
        to one engine share its turn on the CPU)."""
        if self.draining or not self.turns.admits(self):
            if self.waiters:
                self.turns.wait(self)
            return
        while self.waiters and self.active < self.parallel:
            turn = self.waiters.popleft()
            if not turn.done():
                self._take()
                turn.set_result(None)

    def _take(self) -> None:
        self.active += 1
        if self.active == 1:
            self.turns.started(self)

    async def _wait_turn(self, max_queue: int) -> None:
        if len(self.waiters) >= max_queue:
            raise OverloadedError(
                f"'{self.model_id}' is busy: {self.active} requests running and "
                f"{len(self.waiters)} waiting (OFFGRID_MAX_QUEUE={max_queue}). Retry shortly.",
                retry_after=2,
            )
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters.append(turn)
        if not self.draining:
            self.turns.wait(self)
        try:
            await turn
        except BaseException:
            if turn in self.waiters:
                self.waiters.remove(turn)
                if not self.waiters:
                    self.turns.withdraw(self)
            elif turn.done() and not turn.cancelled() and turn.exception() is None:
                self.leave()  # we were given a place but leave: pass it on
            raise


class Lease:
    """A request's hold on an engine; ``release()`` is idempotent."""

    def __init__(
        self, model_id: str, slot: Slot, release: Callable[[Slot], None], waited: float = 0.0
    ) -> None:
        self.model_id = model_id
        self.waited = waited  # seconds from asking to holding: a load and the queue
        self.engine = slot.engine
        self._slot = slot
        self._release = release
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._release(self._slot)
