"""Run the HTTP server: uvicorn with uvloop and httptools, set explicitly, and systemd told.

Without uvloop/httptools uvicorn silently falls back to a pure-Python server (+0.5 ms per
request, +20 % CPU, DESIGN.md decision 4). Its 5 s keep-alive would race with clients
reusing connections, so it is raised well above that. Under systemd (``Type=notify``) the
server says READY once it listens, pings the watchdog from its event loop and says
STOPPING when it begins to shut down; elsewhere those calls do nothing.
"""

from __future__ import annotations

import asyncio
import socket

import uvicorn

from offgrid.api.app import create_app
from offgrid.auth.guard import refuse_open_exposure
from offgrid.config import Settings
from offgrid.errors import ConfigError
from offgrid.service.notify import notify, watchdog, watchdog_interval

__all__ = ["make_server"]


class _Server(uvicorn.Server):
    """uvicorn's server, telling systemd when it is ready and when it stops."""

    _stop_pings: asyncio.Event | None = None
    _pinger: asyncio.Task[None] | None = None

    extra_port = 0  # a second listener for the same app (OFFGRID_OLLAMA_PORT)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        if sockets is None and self.extra_port:
            sockets = [self.config.bind_socket(), _listen(self.config.host, self.extra_port)]
        await super().startup(sockets)
        if not self.started:
            return  # startup failed: uvicorn exits, systemd sees the failure
        host, port = self.config.host, self.config.port
        notify("READY=1", f"STATUS=Serving on http://{host}:{port}")
        interval = watchdog_interval()
        if interval is not None:
            self._stop_pings = asyncio.Event()
            self._pinger = asyncio.create_task(watchdog(interval, self._stop_pings))

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        notify("STOPPING=1", "STATUS=Stopping the engines")
        if self._stop_pings is not None and self._pinger is not None:
            self._stop_pings.set()
            await self._pinger
        await super().shutdown(sockets)


def make_server(settings: Settings) -> uvicorn.Server:
    """A uvicorn server for ``settings``; ``.run()`` blocks until SIGINT/SIGTERM.

    Refuses (ConfigError) to serve beyond loopback while no API key exists, unless
    ``OFFGRID_INSECURE_NO_AUTH`` says to.
    """
    refuse_open_exposure(settings)
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        timeout_keep_alive=75,
        timeout_graceful_shutdown=10,
        log_level=settings.log_level.lower(),
    )
    server = _Server(config)
    server.extra_port = settings.ollama_port
    return server


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``, as uvicorn binds its own."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        where = f"{host}:{port} (OFFGRID_OLLAMA_PORT)"
        raise ConfigError(f"Cannot listen on {where}: {exc.strerror}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock
