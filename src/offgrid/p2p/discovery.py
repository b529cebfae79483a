"""Finding other nodes on the LAN: DNS-SD over multicast DNS (``_offgrid._tcp``), with
``zeroconf``, when P2P is on.

A node announces its name, version, certificate fingerprint and peer port, nothing more:
no model list goes out in the clear (a paired peer asks for it over mutual TLS). It
browses for the others and remembers what it heard; a paired peer heard at a new address
is followed there (``PeerStore.seen_at``). Where multicast does not cross the network,
peers are reached by address instead (``p2p_peers``, or the address given at pairing).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from offgrid import __version__

if TYPE_CHECKING:
    from zeroconf import ServiceStateChange, Zeroconf
    from zeroconf.asyncio import AsyncServiceBrowser, AsyncZeroconf

__all__ = ["SERVICE", "Discovery", "Seen"]

SERVICE = "_offgrid._tcp.local."
log = logging.getLogger("offgrid.p2p")


@dataclass(frozen=True)
class Seen:
    """A node heard on the LAN."""

    name: str
    fingerprint: str
    version: str
    address: str  # host:port of its peer listener
    seen_at: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _addresses(host: str) -> list[str]:
    """The IPv4 addresses to announce: the bound one, or every non-loopback one."""
    if host not in ("", "0.0.0.0", "::"):
        return [host]
    import ifaddr

    found = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if ip.is_IPv4 and not str(ip.ip).startswith("127."):
                found.append(str(ip.ip))
    return found


class Discovery:
    """Announce this node and listen for the others, until ``close()``."""

    def __init__(
        self, name: str, fingerprint: str, host: str, port: int, heard: Callable[[Seen], None]
    ) -> None:
        self.name, self.fingerprint, self.host, self.port = name, fingerprint, host, port
        self.heard = heard
        self.seen: dict[str, Seen] = {}  # by fingerprint
        self._zc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._info: Any = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        from zeroconf import InterfaceChoice, IPVersion
        from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

        addresses = _addresses(self.host)
        bound = self.host not in ("", "0.0.0.0", "::")  # then only on that address's link
        self._zc = AsyncZeroconf(
            ip_version=IPVersion.V4Only, interfaces=[self.host] if bound else InterfaceChoice.All
        )
        self._info = AsyncServiceInfo(
            SERVICE,
            f"{self.name}-{self.fingerprint[:8]}.{SERVICE}",
            port=self.port,
            properties={"name": self.name, "version": __version__, "fp": self.fingerprint},
            addresses=[socket.inet_aton(a) for a in addresses],
            server=f"{self.name}-{self.fingerprint[:8]}.local.",
        )
        await self._zc.async_register_service(self._info)
        self._browser = AsyncServiceBrowser(self._zc.zeroconf, SERVICE, handlers=[self._changed])
        log.info("announcing %s on %s (DNS-SD %s)", self.name, ", ".join(addresses), SERVICE)

    def _changed(
        self, zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        from zeroconf import ServiceStateChange

        if state_change is ServiceStateChange.Removed:
            for fp, seen in list(self.seen.items()):
                if name.startswith(f"{seen.name}-{fp[:8]}."):
                    del self.seen[fp]
            return
        task = asyncio.ensure_future(self._resolve(service_type, name))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _resolve(self, service_type: str, name: str) -> None:
        from zeroconf.asyncio import AsyncServiceInfo

        if self._zc is None:
            return
        info = AsyncServiceInfo(service_type, name)
        if not await info.async_request(self._zc.zeroconf, 3000):
            return
        props = {k.decode(): (v or b"").decode() for k, v in info.properties.items()}
        fp = props.get("fp", "")
        addresses = info.parsed_addresses()
        if not fp or fp == self.fingerprint or not addresses or not info.port:
            return
        seen = Seen(
            props.get("name", ""),
            fp,
            props.get("version", ""),
            f"{addresses[0]}:{info.port}",
            time.time(),
        )
        self.seen[fp] = seen
        self.heard(seen)

    def list(self) -> list[Seen]:
        return sorted(self.seen.values(), key=lambda s: s.name)

    async def close(self) -> None:
        """Say goodbye and stop (awaited: a ghost would haunt the next server otherwise)."""
        for task in list(self._tasks):
            task.cancel()
        if self._browser is not None:
            await self._browser.async_cancel()
        if self._zc is not None:
            if self._info is not None:
                await self._zc.async_unregister_service(self._info)
            await self._zc.async_close()
