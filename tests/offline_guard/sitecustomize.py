"""Loaded by every `offgrid serve` the tests start (conftest puts this folder first on
PYTHONPATH): any connection, datagram or name lookup beyond loopback is refused and written
to ``$OFFGRID_TEST_OFFLINE_LOG``, which the test then finds (issue 18: the offline proof).
A test that asks for the network on purpose reads and clears that file itself.

``$OFFGRID_TEST_ALLOW_NET`` (comma-separated CIDRs, e.g. a LAN test's subnet and the mDNS
groups) names networks allowed besides loopback: connecting or sending to an address in
one, and looking up such an address written as a literal.

With ``$OFFGRID_TEST_KILL_AT`` or ``$OFFGRID_TEST_KILL_COUNT`` set, the process also gets
the crash tests' kill points (``kill_points``)."""

from __future__ import annotations

import ipaddress
import os
import socket
import sys

_LOG = os.environ.get("OFFGRID_TEST_OFFLINE_LOG", "")
_NETWORKS = (socket.AF_INET, socket.AF_INET6)
_ALLOWED = tuple(
    ipaddress.ip_network(cidr.strip(), strict=False)
    for cidr in os.environ.get("OFFGRID_TEST_ALLOW_NET", "").split(",")
    if cidr.strip()
)


def _allowed(host: object) -> bool:
    """Whether ``host`` is loopback or an address in an allowed network."""
    if host in (None, "localhost", b"localhost"):
        return True
    text = host.decode() if isinstance(host, bytes) else str(host)
    try:
        address = ipaddress.ip_address(text.split("%")[0])
    except ValueError:
        return False  # a name: its lookup alone would leave the box
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        mapped = address.ipv4_mapped
        return any(mapped in net for net in _ALLOWED if net.version == 4)
    return address.is_loopback or any(
        address in net for net in _ALLOWED if net.version == address.version
    )


def _refuse(what: str, host: object, port: object) -> None:
    with open(_LOG, "a", encoding="utf-8") as log:
        log.write(f"{what} {host}:{port}\n")
    raise ConnectionRefusedError(f"offline test: {what} {host}:{port} was not asked for")


def _hook(event: str, args: tuple[object, ...]) -> None:
    if event == "socket.getaddrinfo":
        host, port = args[0], args[1]
        if not _allowed(host):
            _refuse("lookup", host, port)
    elif event in ("socket.connect", "socket.sendto"):
        sock, address = args[0], args[1]
        network = getattr(sock, "family", None) in _NETWORKS and isinstance(address, tuple)
        if network and not _allowed(address[0]):
            _refuse(event.removeprefix("socket."), address[0], address[1])


if _LOG:
    sys.addaudithook(_hook)

if os.environ.get("OFFGRID_TEST_KILL_AT") or os.environ.get("OFFGRID_TEST_KILL_COUNT"):
    import kill_points  # noqa: F401 (its import sets the kill points: the crash tests)
