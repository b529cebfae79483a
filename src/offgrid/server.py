"""Run the HTTP server: uvicorn with uvloop and httptools, set explicitly.

Without uvloop/httptools uvicorn silently falls back to a pure-Python server (+0.5 ms per
request, +20 % CPU, DESIGN.md decision 4). Its 5 s keep-alive would race with clients
reusing connections, so it is raised well above that.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import requests
import uvicorn

from offgrid.api.app import create_app
from offgrid.config import Settings
from offgrid.engine.process import free_port
from offgrid.errors import EngineUnavailableError

__all__ = ["api_url", "configure_logging", "make_server"]


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def make_server(settings: Settings) -> uvicorn.Server:
    """A uvicorn server for ``settings``; ``.run()`` blocks until SIGINT/SIGTERM."""
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
    return uvicorn.Server(config)


def _healthy(url: str) -> bool:
    try:
        return requests.get(f"{url}/health", timeout=2).status_code == 200
    except requests.RequestException:
        return False


@contextmanager
def api_url(settings: Settings) -> Iterator[str]:
    """The URL of a running OffGrid server, or of one started in a thread until exit.

    The in-process server listens on a free loopback port and stops its engines when the
    block ends, so ``offgrid run`` works with or without ``offgrid serve``.
    """
    url = f"http://{settings.host}:{settings.port}"
    if _healthy(url):
        yield url
        return
    port = free_port()
    server = make_server(settings.with_overrides(host="127.0.0.1", port=port))
    thread = threading.Thread(target=server.run, name="offgrid-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise EngineUnavailableError("Could not start the in-process OffGrid server.")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
