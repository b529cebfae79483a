"""sd_notify in a few lines of stdlib: tell systemd the server is ready, alive and stopping.

systemd passes a ``Type=notify`` service the datagram socket to write to in
``$NOTIFY_SOCKET`` (a path, or an abstract socket name when it starts with ``@``) and, with
``WatchdogSec=``, the watchdog period in ``$WATCHDOG_USEC``. Outside systemd the variable is
unset and every call here does nothing, so the server calls them unconditionally. The
environment is a parameter (``os.environ`` by default) so tests pass a dict.

- ``notify("READY=1")`` once the API answers, ``notify("STOPPING=1")`` on shutdown,
  ``notify("STATUS=…")`` for a line in ``systemctl status``;
- ``watchdog(interval, stop)`` as a task on the server's event loop, with the interval from
  ``watchdog_interval()``: the pings come from the loop itself, so a wedged loop stops them
  and systemd restarts the service.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Mapping

__all__ = ["notify", "watchdog", "watchdog_interval"]

log = logging.getLogger(__name__)


def notify(*states: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Send ``states`` (``READY=1``, ``WATCHDOG=1``, ``STOPPING=1``, ``STATUS=…``) to systemd
    as one datagram; True when it was sent.

    False, and nothing sent, when ``$NOTIFY_SOCKET`` is unset (not run by systemd) or no
    state is given. Never
    raises for a socket that is missing, refuses or is full (logged at debug): the socket
    is non-blocking, so a call from the event loop cannot stall it. A newline inside a
    state would start another assignment, so it becomes a space.
    """
    address = environ.get("NOTIFY_SOCKET", "")
    if not address or not states:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    payload = "\n".join(" ".join(state.splitlines()) for state in states).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            sock.sendto(payload, address)
    except OSError as exc:
        log.debug("sd_notify to %r failed: %s", environ["NOTIFY_SOCKET"], exc)
        return False
    return True


def watchdog_interval(environ: Mapping[str, str] = os.environ) -> float | None:
    """Seconds between watchdog pings: half of ``$WATCHDOG_USEC``, as systemd advises.

    None when there is no watchdog: the variable is unset or not a positive integer, or
    ``$WATCHDOG_PID`` names another process (the variables were inherited from a parent).
    """
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
        pid = int(environ.get("WATCHDOG_PID") or os.getpid())
    except ValueError:
        return None
    if usec <= 0 or pid != os.getpid():
        return None
    return usec / 2 / 1_000_000


async def watchdog(
    interval: float, stop: asyncio.Event, *, environ: Mapping[str, str] = os.environ
) -> None:
    """Send ``WATCHDOG=1`` now and then every ``interval`` seconds until ``stop`` is set.

    It runs on the event loop on purpose: if the loop wedges, the pings stop and systemd
    kills and restarts the service after ``WatchdogSec=``. Returns as soon as ``stop`` is
    set, without waiting out the interval.
    """
    if interval <= 0:
        raise ValueError(f"watchdog interval must be positive, not {interval}")
    while not stop.is_set():
        notify("WATCHDOG=1", environ=environ)
        try:
            await asyncio.wait_for(stop.wait(), interval)
        except TimeoutError:
            continue
