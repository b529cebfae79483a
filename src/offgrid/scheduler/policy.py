"""The scheduler's pure decisions: where a model goes, which idle models make room for it,
which busy ones to drain when none can, and when an idle model has outlived its
keep-alive. Tested with tables, no engine."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from offgrid.errors import InsufficientMemoryError
from offgrid.placement import MIB, Memory, Placement

__all__ = [
    "RESERVE",
    "Policy",
    "SlotView",
    "expired",
    "plan_drain",
    "plan_eviction",
    "plan_load",
]

RESERVE = Memory(256 * MIB, 512 * MIB)


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
    ram_limit: int = 0  # most RAM all engines together may take (0: no limit)
    parallel_by_model: Mapping[str, int] = field(default_factory=dict)
    cpu_cores: int = 0  # engines on the CPU take turns within these cores (0: they do not)

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


def plan_drain(
    plan: Callable[[Memory], Placement],
    free: Memory,
    loaded: Sequence[SlotView],
    max_loaded: int,
) -> list[str]:
    """The busy models to drain for a load that has to wait: those ``plan_eviction`` would
    stop were they idle (least recently used first, as few as the model needs). Without
    this a model that keeps being asked for never goes idle, and the waiting one waits for
    ever; drained, it finishes what runs, makes room, and its queue reloads it in turn."""
    unpinned = [replace(s, active=0) for s in loaded if not s.pinned]
    need = plan(free + _total(unpinned)).need
    victims = plan_eviction(need, free, [*unpinned, *(s for s in loaded if s.pinned)], max_loaded)
    busy = {s.model_id for s in loaded if s.active}
    return [v for v in victims or [] if v in busy]


def expired(busy: int, last_used: float, keep_alive: float, pinned: bool, now: float) -> bool:
    """Whether an idle model (no request running or queued) has outlived its keep-alive."""
    if pinned or busy > 0 or keep_alive < 0:
        return False
    return now - last_used >= keep_alive
