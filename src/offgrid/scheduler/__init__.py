"""Which engines run: load on demand once per model, a memory budget, queues, idle unload.

A request takes a ``Lease`` on the engine of its model and gives it back when its answer is
finished. Placement, starting engines, the memory probe and the clock are injected, so the
``Scheduler`` is tested without llama-server.

- N requests arriving together for a cold model share one load; a failed load fails them
  all with its reason.
- Memory is RAM and GPU memory together (``placement.Memory``). A model is placed (how
  many layers on the GPU) for the memory it could have with every idle model stopped: more
  layers on the GPU beat keeping an idle model loaded. Then idle models are stopped, least
  recently used first, only until that placement fits. A model with requests in flight, or
  a pinned one, is never evicted; when only busy models hold the memory a waiting model
  needs, they are drained (nothing new admitted; their queued requests ask again once they
  are stopped, and reload them in turn), so a model in steady demand cannot keep another
  out for ever. A model that cannot fit even alone is refused with how
  much it needs and how much there is. ``max_loaded`` caps the count the same way.
- Each model runs at most ``parallel`` requests; up to ``max_queue`` more wait in arrival
  order; beyond that the request gets 429 with Retry-After. A waiter whose client leaves
  leaves the queue.
- An idle model unloads ``keep_alive`` seconds after its last request (0: at once, negative:
  never; a request may set its own); pinned models never unload.
- A model whose engine keeps crashing is not restarted for a while (backoff), and
  ``status()`` says why.

Modules: ``policy`` (the pure decisions, tested with tables), ``clock``, ``queues`` (slots,
turns and leases), ``lifecycle`` (starting, crashes, unloading, reaping), ``service`` (the
``Scheduler`` the server calls).
"""

from offgrid.scheduler.clock import Clock, MonotonicClock
from offgrid.scheduler.policy import (
    Policy,
    SlotView,
    expired,
    plan_drain,
    plan_eviction,
    plan_load,
)
from offgrid.scheduler.queues import Lease
from offgrid.scheduler.service import Scheduler

__all__ = [
    "Clock",
    "Lease",
    "MonotonicClock",
    "Policy",
    "Scheduler",
    "SlotView",
    "expired",
    "plan_drain",
    "plan_eviction",
    "plan_load",
]
