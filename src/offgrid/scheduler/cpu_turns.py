"""CPU engines take turns: engines whose threads together would outnumber the cores do not
compute at the same time.

Each llama-server is started with a thread per core, and its threads meet at a barrier
many times per token; two such engines computing at once on the same cores keep
descheduling each other's threads at those barriers. Measured on 2 cores (SmolLM2, 128
tokens each, two at once): **8.8 to 25 s** against 1.2 s for one alone — running the two one
after the other takes 2.3 s. So a CPU engine that would not fit the cores beside those
computing waits, in arrival order among models, until they are idle; while a model waits,
those computing admit nothing new (each finishes what runs). A model given its turn admits
its whole queue up to its slots at once: requests to one model are batched by its engine,
so they share the turn. Engines fully on a GPU take no turn; engines given fewer threads
(per-model ``threads``) run side by side while their threads fit the cores.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Sequence, Sized
from typing import Protocol

from offgrid.placement import Placement

__all__ = ["CpuTurns", "cpu_threads"]


class Slot(Protocol):
    """What a turn needs of a loaded engine (``queues.Slot``)."""

    @property
    def cpu(self) -> int: ...
    @property
    def waiters(self) -> Sized: ...
    def admit(self) -> None: ...


def cpu_threads(argv: Sequence[str], placement: Placement, layers: int | None) -> int:
    """The cores an engine computes on: its ``--threads`` (or ``--threads-batch``, if more),
    0 when all its ``layers`` and the output layer (``-ngl`` counts it: layers + 1) are on
    a GPU, or when its command line names no thread count."""
    if layers and placement.gpu_layers > layers:
        return 0
    counts = {}  # the last of each flag wins, as in llama.cpp (tuned flags come last)
    for flag, value in itertools.pairwise([a for arg in argv for a in arg.split("=", 1)]):
        kind = {"-t": "--threads", "-tb": "--threads-batch"}.get(flag, flag)
        if kind in ("--threads", "--threads-batch") and value.isdigit():
            counts[kind] = int(value)
    return max(counts.values(), default=0)


class CpuTurns:
    """Which engines compute now, and which wait for the cores; ``cores`` 0: no turns."""

    def __init__(self, cores: int) -> None:
        self.cores = cores
        self.computing: set[Slot] = set()  # running requests, on the CPU
        self.waiting: collections.deque[Slot] = collections.deque()  # queued for the CPU

    def admits(self, slot: Slot) -> bool:
        """Whether ``slot`` may start requests now (its first, or more)."""
        if not self.cores or not slot.cpu:
            return True
        if slot in self.computing:
            return not self.waiting  # another model waits: finish, take nothing new
        if self.waiting and self.waiting[0] is not slot:
            return False  # in arrival order
        used = sum(s.cpu for s in self.computing)
        return not self.computing or used + slot.cpu <= self.cores

    def wait(self, slot: Slot) -> None:
        """``slot`` has requests queued that it may not start: it waits for its turn
        (one computing now asks again when it goes idle)."""
        if self.cores and slot.cpu and slot not in self.computing and slot not in self.waiting:
            self.waiting.append(slot)

    def started(self, slot: Slot) -> None:
        """``slot`` started its first request: it computes."""
        if self.cores and slot.cpu:
            self.computing.add(slot)
            if slot in self.waiting:
                self.waiting.remove(slot)

    def idle(self, slot: Slot) -> None:
        """``slot`` has no request running: the next in line may start (``slot`` itself,
        if it has more queued, waits behind those already waiting)."""
        if slot in self.computing:
            self.computing.discard(slot)
            if slot.waiters:
                self.wait(slot)
            self._pass_on()

    def withdraw(self, slot: Slot) -> None:
        """``slot``'s queue went away (its clients left): it no longer waits."""
        if slot in self.waiting:
            self.waiting.remove(slot)
            self._pass_on()

    def forget(self, slot: Slot) -> None:
        """``slot``'s engine is stopped: it neither computes nor waits."""
        self.computing.discard(slot)
        if slot in self.waiting:
            self.waiting.remove(slot)
        self._pass_on()

    def _pass_on(self) -> None:
        """Start the models first in line while they fit; with nobody left in line, the
        models computing admit their queues again."""
        while self.waiting:
            slot = self.waiting[0]
            if not self.admits(slot):
                return
            slot.admit()
            if self.waiting and self.waiting[0] is slot:  # nothing it could start
                self.waiting.popleft()
        for slot in list(self.computing):
            slot.admit()
