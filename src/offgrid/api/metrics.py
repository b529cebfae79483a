"""What the server has been doing, for Prometheus (``/metrics``) and the dashboard
(``/api/stats``): both are read from the same ``prometheus_client`` registry.

Counted as requests end: requests by route and status, their duration; for completions
the model's prompt and completion tokens, time to first token and decode speed, taken
from the engine's own ``usage``/``timings`` (the last events of a stream, or the body).
Read at scrape time from the scheduler: loaded models and their memory, busy slots and
queue lengths, engine starts, crashes and restarts.

The last hour, for the dashboard's charts: a ring of points sampled from a timer on the
event loop every 30 s (never on the request path), each with the tokens generated and
the requests answered per interval, and the machine's RAM in use.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import psutil
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from offgrid.scheduler import Scheduler

__all__ = ["Metrics", "completion_facts"]

# the dashboard's and Prometheus's own reads, left out of the history's requests
_WATCHING = frozenset({"/api/stats", "/metrics"})
_SECONDS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class Metrics:
    """The server's counters, histograms and gauges, in a registry of its own."""

    def __init__(
        self,
        scheduler: Scheduler,
        *,
        sample_seconds: float = 30.0,
        history_seconds: float = 3600.0,
    ) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self.requests = Counter(
            "offgrid_requests", "HTTP requests answered", ["route", "status"], registry=r
        )
        self.duration = Histogram(
            "offgrid_request_duration_seconds",
            "Time to answer a request, to its last byte",
            ["route"],
            buckets=_SECONDS,
            registry=r,
        )
        self.prompt_tokens = Counter(
            "offgrid_prompt_tokens", "Prompt tokens processed", ["model"], registry=r
        )
        self.completion_tokens = Counter(
            "offgrid_completion_tokens", "Tokens generated", ["model"], registry=r
        )
        self.ttft = Histogram(
            "offgrid_time_to_first_token_seconds",
            "Time from a streamed request to its first chunk",
            ["model"],
            buckets=_SECONDS,
            registry=r,
        )
        self.wait = Histogram(
            "offgrid_queue_wait_seconds",
            "Time from a request's arrival at the scheduler to its engine slot (load and queue)",
            ["model"],
            buckets=_SECONDS,
            registry=r,
        )
        self.speed = Gauge(
            "offgrid_tokens_per_second",
            "Decode speed of the model's last completion",
            ["model"],
            registry=r,
        )
        r.register(_SchedulerCollector(scheduler))
        self.started = time.time()
        self.sample_seconds = sample_seconds
        self.points: deque[dict[str, float]] = deque(
            maxlen=max(1, round(history_seconds / sample_seconds))
        )
        self._last = (self.started, 0.0, 0.0)  # time, requests, tokens at the last point
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        """Take a point of history now and every ``sample_seconds`` on the running loop,
        until ``close()``."""
        now, totals = time.time(), self._totals()
        self.points.append(self._point(now, totals))
        self._last = (now, *totals)
        self._timer = asyncio.get_running_loop().call_later(self.sample_seconds, self.start)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def history(self) -> dict[str, Any]:
        """The points of the last hour, oldest first, and one for now when the last is more
        than a second old."""
        points = list(self.points)
        now = time.time()
        if not points or now - points[-1]["time"] >= 1:
            points.append(self._point(now, self._totals()))
        return {"sample_seconds": self.sample_seconds, "points": points}

    def _totals(self) -> tuple[float, float]:
        """Requests answered (but the watchers' reads) and tokens generated, since start."""
        requests = sum(
            s.value
            for m in self.requests.collect()
            for s in m.samples
            if s.name.endswith("_total") and s.labels["route"] not in _WATCHING
        )
        tokens = sum(
            s.value
            for m in self.completion_tokens.collect()
            for s in m.samples
            if s.name.endswith("_total")
        )
        return requests, tokens

    def _point(self, now: float, totals: tuple[float, float]) -> dict[str, float]:
        """Rates since the last point, and the RAM in use now."""
        then, requests_then, tokens_then = self._last
        requests, tokens = totals
        seconds = max(now - then, 1e-9)
        mem = psutil.virtual_memory()
        return {
            "time": now,
            "tokens_per_second": (tokens - tokens_then) / seconds,
            "requests_per_minute": (requests - requests_then) * 60 / seconds,
            "ram_used_bytes": float(mem.total - mem.available),
        }

    def _of(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, looked up once: prometheus_client validates and locks
        on every call, and this runs several times for each request."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def request(self, route: str, status: int, seconds: float) -> None:
        self._of(self.requests, route, str(status)).inc()
        self._of(self.duration, route).observe(seconds)

    def waited(self, model: str, seconds: float) -> None:
        """A request got its engine slot after ``seconds`` (a load, the queue)."""
        self._of(self.wait, model).observe(seconds)

    def completion(self, model: str, facts: dict[str, float], ttft: float | None) -> None:
        """Count one completion's tokens (``completion_facts``) and speeds."""
        if "prompt" in facts:
            self._of(self.prompt_tokens, model).inc(facts["prompt"])
        if "completion" in facts:
            self._of(self.completion_tokens, model).inc(facts["completion"])
        if "per_second" in facts:
            self._of(self.speed, model).set(facts["per_second"])
        if ttft is not None:
            self._of(self.ttft, model).observe(ttft)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def stats(self) -> dict[str, Any]:
        """The same figures as ``/metrics``, as JSON: totals by label, histogram sums and
        counts (from which the dashboard takes averages and, between polls, rates)."""
        out: dict[str, Any] = {"started_at": self.started, "time": time.time()}
        for family in self.registry.collect():
            key = family.name.removeprefix("offgrid_")
            for s in family.samples:
                if s.name.endswith(("_created", "_bucket")):
                    continue
                suffix = s.name.removeprefix(family.name).lstrip("_") or "value"
                labels = ",".join(s.labels.values()) or "all"
                out.setdefault(key, {}).setdefault(labels, {})[suffix] = s.value
        return out


class _SchedulerCollector(Collector):
    """Gauges and counters read from the scheduler when scraped."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler

    def collect(self) -> Iterable[Metric]:
        rows = [r for r in self.scheduler.status() if r.get("state") not in ("loading", "backoff")]
        loaded = GaugeMetricFamily("offgrid_loaded_models", "Models loaded now")
        loaded.add_metric([], len(rows))
        memory = GaugeMetricFamily(
            "offgrid_model_memory_bytes", "Memory a loaded model takes", labels=["model", "kind"]
        )
        busy = GaugeMetricFamily(
            "offgrid_busy_slots", "Requests a model's engine runs now", labels=["model"]
        )
        slots = GaugeMetricFamily("offgrid_slots", "Parallel slots of an engine", labels=["model"])
        queue = GaugeMetricFamily(
            "offgrid_queue_length", "Requests waiting for a model", labels=["model"]
        )
        for row in rows:
            mid = str(row["id"])
            memory.add_metric([mid, "ram"], float(str(row["ram_bytes"])))
            memory.add_metric([mid, "vram"], float(str(row["vram_bytes"])))
            busy.add_metric([mid], float(str(row["active_requests"])))
            slots.add_metric([mid], float(str(row["parallel"])))
            queue.add_metric([mid], float(str(row["queued_requests"])))
        yield from (loaded, memory, busy, slots, queue)
        events = self.scheduler.events
        for name, doc in (
            ("starts", "Engines started"),
            ("crashes", "Engines that exited or stopped answering unasked"),
            ("restarts", "Engines started again after a crash"),
        ):
            family = CounterMetricFamily(f"offgrid_engine_{name}", doc, labels=["model"])
            for (event, mid), n in sorted(events.items()):
                if event == name:
                    family.add_metric([mid], n)
            yield family


_FACT = re.compile(
    rb'"(prompt_tokens|completion_tokens|prompt_n|cache_n|predicted_n|predicted_per_second)"'
    rb":\s*([0-9.eE+-]+)"
)


def completion_facts(text: bytes) -> dict[str, float]:
    """Tokens and speed of a completion, from its body or the last events of its stream:
    the engine's ``usage`` where it gives one, else its ``timings``. Read with a regular
    expression, not a JSON parser: a body of embeddings can be large, and a stream's tail
    may start mid-event."""
    found: dict[bytes, float] = {}
    for key, value in _FACT.findall(text):
        try:
            found[key] = float(value)  # the last one wins: the final event's
        except ValueError:
            continue
    facts: dict[str, float] = {}
    if b"prompt_tokens" in found:
        facts["prompt"] = found[b"prompt_tokens"]
    elif b"prompt_n" in found:
        facts["prompt"] = found[b"prompt_n"] + found.get(b"cache_n", 0.0)
    if b"completion_tokens" in found:
        facts["completion"] = found[b"completion_tokens"]
    elif b"predicted_n" in found:
        facts["completion"] = found[b"predicted_n"]
    if found.get(b"predicted_per_second"):
        facts["per_second"] = found[b"predicted_per_second"]
    return facts
