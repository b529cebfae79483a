"""The one runtime of a server: every long-lived part, built from the settings.

    Settings ─ Registry (models) ─ Scheduler (engines) ─ Relay (requests to engines)
            └ Guard (API keys), Pulls (Hub and peer downloads), ImportJobs (imports asked
              over the API), Metrics, the models folders' watch, and with P2P on the
              LAN Node (``p2p.node``: pairing, the peer listener, discovery)

``Runtime.start(settings)`` builds and starts them (the app's lifespan calls it);
``close()`` stops them in reverse order, every engine included, so a stopped server
leaves no child behind. Routes receive it as a dependency (``api.deps``); nothing here is
a module-level singleton, so two servers can run in one process (the tests do).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from dataclasses import dataclass

from offgrid.api.dialects import FORM_ROUTES
from offgrid.api.metrics import Metrics
from offgrid.api.relay.path import Relay
from offgrid.api.relay.request import ROUTES
from offgrid.auth.guard import Guard, open_without_keys
from offgrid.auth.keys import KeyStore
from offgrid.config import Settings
from offgrid.engine.plan import (
    estimate,
    make_starter,
    manages_gpu,
    plan_placement,
    scheduler_policy,
)
from offgrid.errors import BadRequestError
from offgrid.hub.pulls import Pulls
from offgrid.models.aliases import load_aliases
from offgrid.models.import_jobs import ImportJobs
from offgrid.models.registry import ModelInfo, Registry
from offgrid.models.watcher import watch_folders
from offgrid.p2p import Node
from offgrid.placement import Memory
from offgrid.resources import available_memory, gpu_free_memory
from offgrid.scheduler import Scheduler
from offgrid.setting_values import parse_aliases

__all__ = ["Runtime"]

log = logging.getLogger("offgrid.runtime")


@dataclass(eq=False)
class Runtime:
    """What a running server is made of; build it with ``await Runtime.start(settings)``."""

    settings: Settings
    registry: Registry
    scheduler: Scheduler
    relay: Relay
    pulls: Pulls
    imports: ImportJobs
    metrics: Metrics
    guard: Guard
    aliases: dict[str, str]  # copies (``models.aliases``), then the config's on top
    p2p: Node | None  # with P2P on
    _stop_watch: asyncio.Event
    _watch: asyncio.Task[None]

    @classmethod
    async def start(cls, settings: Settings) -> Runtime:
        registry = Registry.for_settings(settings)
        gpu = await asyncio.to_thread(manages_gpu, settings)
        guard = Guard(
            KeyStore.for_settings(settings),
            inference={*ROUTES, *FORM_ROUTES, "/api/show"},  # Ollama's show: a POST that reads
            open_without_keys=open_without_keys(settings),
        )
        pulls = Pulls(registry)
        p2p = None
        if settings.p2p:
            relayed = frozenset({*ROUTES, *FORM_ROUTES})
            p2p = await Node.start(settings, registry, pulls, guard.peer_key, relayed)
        plan = functools.partial(plan_placement, settings, gpu)
        scheduler = Scheduler(
            registry,
            make_starter(settings, gpu, p2p.engine_args if p2p else None),
            policy=scheduler_policy(settings),
            plan=p2p.spreading(plan) if p2p else plan,
            available=lambda: Memory(available_memory(), gpu_free_memory() if gpu else 0),
        )
        metrics = Metrics(scheduler)
        relay = Relay(scheduler, metrics)
        await relay.start()
        settings.models_dir.mkdir(parents=True, exist_ok=True)
        stop_watch = asyncio.Event()
        watch = asyncio.create_task(
            watch_folders(settings.model_folders, scheduler.unload_changed, stop_watch)
        )
        if p2p is not None:
            p2p.status = scheduler.status
        aliases = load_aliases(settings.data_dir / "aliases.json") | parse_aliases(
            settings.model_aliases
        )
        imports = ImportJobs(registry, settings.data_dir / "keys", settings.import_roots)
        metrics.start()  # the history's timer, stopped by close()
        return cls(
            settings,
            registry,
            scheduler,
            relay,
            pulls,
            imports,
            metrics,
            guard,
            aliases,
            p2p,
            stop_watch,
            watch,
        )

    async def close(self) -> None:
        """Stop everything: the watch, pulls, every engine, the connections, the index;
        each step even when one before it failed, so that no engine outlives the server."""
        self._stop_watch.set()
        self.metrics.close()

        async def registry() -> None:
            self.registry.close()

        async def p2p() -> None:
            if self.p2p is not None:
                await self.p2p.close()

        steps = (lambda: self._watch, self.pulls.close, self.imports.close, self.scheduler.close)
        for step in (*steps, p2p, self.relay.close, registry):  # p2p: engines use its tunnels
            try:
                await step()
            except Exception:
                log.exception("while stopping the server")

    def lan(self) -> Node:
        """The LAN side, or a 400 that says how to switch it on."""
        if self.p2p is None:
            raise BadRequestError(
                "P2P is off on this node: start it with OFFGRID_P2P=1 (or p2p.enabled: true in "
                "the config) to pair with peers and share models over the LAN."
            )
        return self.p2p

    def resolve(self, name: str) -> str:
        """The model id a client's name stands for: an alias's model, else the name itself
        (without the ``:latest`` tag Ollama's clients add)."""
        if name in self.aliases:
            return self.aliases[name]
        bare = name.removesuffix(":latest")
        return self.aliases.get(bare, bare)

    def estimate(self, model: ModelInfo) -> dict[str, int]:
        """The memory ``model`` needs with its settings (``engine.plan.estimate``)."""
        return estimate(self.settings, model)
