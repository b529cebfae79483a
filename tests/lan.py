"""A real LAN on one machine, for the peer tests: network namespaces joined by a bridge.

::

    with Lan(2) as lan:
        a, b = lan.nodes
        srv = start_node_server(a, tmp_path / "a", models, engine_binary)
        requests.get(f"{srv.url}/health")  # the host reaches a's loopback through a.forward()

How (only iproute2 and the kernel; nothing is installed):

- a "switch" namespace holds a Linux bridge ``br0`` with multicast snooping off, so mDNS
  (224.0.0.251, ff02::fb) is flooded to every port whoever joined what;
- each node is a namespace whose ``eth0`` is one end of a veth pair, the other end (``pN``)
  a port of the bridge. Both ends are made inside their namespaces, so nothing of a LAN
  ever shows in the host's ``ip link``. Addresses are ``10.231.X.N/24``, X per LAN (from
  the pid and a counter), and each node routes ``224.0.0.0/4`` to eth0: without a default
  route a multicast send would fail with ENETUNREACH. IPv6 duplicate address detection is
  off, so eth0's link-local address is usable as soon as the link is up;
- the host gets ``blackhole 10.231.0.0/16 proto 231`` (unless it has a blackhole for it):
  it cannot reach the LAN, and nothing meant for a LAN leaves by the host's default route.
  The last LAN to go, of any process, removes it (a lock file in /run orders the check for
  other LANs against their start); a route without the mark is never removed;
- the test process stays in the host's namespace and reaches a node's loopback through
  ``Node.forward``: a TCP relay whose inner sockets are made by a thread that entered the
  node's namespace with setns(2) (namespaces are per thread, and a socket keeps the
  namespace it was made in);
- on exit, or when setup fails halfway: the relays close, the processes started with
  ``Node.popen`` (their sessions) get SIGTERM then SIGKILL, anything else still in a node
  is killed, the namespaces are deleted (and with them their veths and the bridge).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import functools
import itertools
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from conftest import Server, start_server
from offgrid.engine.build import EngineBinary

__all__ = ["MDNS_NETS", "SUPERNET", "Lan", "Node", "available", "start_node_server"]

SUPERNET = "10.231.0.0/16"
GUARD_PROTO = "231"  # the protocol number that marks the host's blackhole route as ours
HOST_LOCK = Path("/run/offgrid-test-lan.lock")
MDNS_NETS = "224.0.0.251/32,ff02::fb/128"
GRACE_S = 5.0  # default from SIGTERM to SIGKILL for processes still running when a LAN goes
_CLONE_NEWNET = 0x40000000
_BUFFER = 65536
_T = TypeVar("_T")

_lock = threading.Lock()
_alive: set[Lan] = set()  # LANs of this process between enter and exit
_sequence = itertools.count()


def available() -> str | None:
    """None if LANs can be built here, else why not (for ``pytest.skip``)."""
    return _probe()


@functools.cache
def _probe() -> str | None:
    if not sys.platform.startswith("linux"):
        return "network namespaces are Linux only"
    if os.geteuid() != 0:
        return "building network namespaces needs root"
    if shutil.which("ip") is None:
        return "ip is not installed (apt-get install iproute2)"
    name = f"oglprobe{os.getpid()}"
    try:
        _ip("netns", "add", name)
    except RuntimeError as exc:
        return f"cannot create a network namespace: {exc}"
    try:
        _ip("-n", name, "link", "add", "br0", "type", "bridge")
        _ip("-n", name, "link", "add", "p0", "type", "veth", "peer", "name", "eth0")
        _in_netns(name, lambda: socket.socket().close())
    except (RuntimeError, OSError) as exc:
        return f"cannot build a bridged LAN: {exc}"
    finally:
        _ip("netns", "delete", name, check=False)
    return None


class Node:
    """One machine of the LAN: a network namespace with ``lo`` and ``eth0`` (``ip``)."""

    def __init__(self, lan: Lan, index: int) -> None:
        self.lan = lan
        self.index = index
        self.ns = f"{lan.name}-n{index}"
        self.ip = f"{lan.prefix}.{index + 1}"
        self.subnet = lan.subnet
        self._procs: list[tuple[subprocess.Popen[Any], bool]] = []  # (process, own session)
        self._forwarders: dict[tuple[str, int], _Forwarder] = {}

    def __repr__(self) -> str:
        return f"Node({self.ns}, {self.ip})"

    def exec(self, argv: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[Any]:
        """``subprocess.run(argv, **kw)`` inside the node."""
        return subprocess.run(["ip", "netns", "exec", self.ns, *argv], **kw)

    def popen(self, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        """``subprocess.Popen(argv, **kw)`` inside the node, in its own session (unless
        ``start_new_session=False``); stopped when the LAN goes if still running. ``ip netns
        exec`` execs, so the Popen's pid is the program's."""
        kw.setdefault("start_new_session", True)
        proc: subprocess.Popen[Any] = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, *argv], **kw
        )
        self._procs.append((proc, bool(kw["start_new_session"])))
        return proc

    def link(self, up: bool) -> None:
        """Take eth0 down (a pulled cable: the node is cut off the LAN) or up again.

        Down drops the routes through eth0; up puts the multicast one back (the subnet's
        comes back with the address).
        """
        _ip("-n", self.ns, "link", "set", "eth0", "up" if up else "down")
        if up:
            _ip("-n", self.ns, "route", "replace", "224.0.0.0/4", "dev", "eth0")

    def forward(self, port: int, host: str = "127.0.0.1") -> int:
        """A TCP relay from the host's 127.0.0.1 to ``host:port`` inside the node; its port.

        Each connection accepted on the host gets its own connection inside, bytes are
        passed on as they come (streams flow), a half-close is passed on, a reset or error
        ends both sides. One relay per target, made on first ask; closed when the LAN goes.
        """
        if (host, port) not in self._forwarders:
            self._forwarders[host, port] = _Forwarder(self.ns, host, port)
        return self._forwarders[host, port].port

    def socket(
        self, family: int = socket.AF_INET, type: int = socket.SOCK_STREAM, proto: int = 0
    ) -> socket.socket:
        """A socket made inside the node: it binds, connects and sends there, whatever
        thread uses it."""
        return self.call(lambda: socket.socket(family, type, proto))

    def call(self, fn: Callable[[], _T]) -> _T:
        """``fn()`` run by a fresh thread inside the node (threads it starts are inside too);
        its result or exception."""
        return _in_netns(self.ns, fn)


class Lan:
    """``nodes`` namespaces on one bridge (see the module's docstring); a context manager."""

    def __init__(self, nodes: int, grace: float = GRACE_S) -> None:
        """``nodes`` machines; ``grace``: seconds from SIGTERM to SIGKILL on exit."""
        if not 1 <= nodes <= 250:
            raise ValueError(f"a LAN has 1 to 250 nodes, not {nodes}")
        pid, seq = os.getpid(), next(_sequence)
        self.name = f"ogl{pid}-{seq}"
        self.switch = f"{self.name}-sw"
        with _lock:
            taken = {lan.prefix for lan in _alive}
        thirds = ((pid + seq + k) % 256 for k in range(256))
        self.prefix: str = next(p for t in thirds if (p := f"10.231.{t}") not in taken)
        self.subnet: str = f"{self.prefix}.0/24"
        self.nodes = [Node(self, i) for i in range(nodes)]
        self._made: list[str] = []  # namespaces made, in order
        self.grace = grace

    def __repr__(self) -> str:
        return f"Lan({self.name}, {self.subnet}, {len(self.nodes)} nodes)"

    def __enter__(self) -> Lan:
        with _lock:
            _alive.add(self)
        try:
            self._build()
        except BaseException:
            self._teardown()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._teardown()

    # -- building -----------------------------------------------------------------------------

    def _build(self) -> None:
        with _host_lock():  # the guard stays while our switch is listed (see _unguard)
            _guard()
            self._remove_leftovers()
            self._add_netns(self.switch)
        sw = ("-n", self.switch)
        _ip(*sw, "link", "set", "lo", "up")
        _ip(*sw, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0")
        _ip(*sw, "link", "set", "br0", "up")
        for node in self.nodes:
            self._add_netns(node.ns)
            port, inside = f"p{node.index}", ("-n", node.ns)
            _ip(*sw, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", node.ns)
            _ip(*sw, "link", "set", port, "master", "br0", "up")
            node.call(_no_dad)
            _ip(*inside, "link", "set", "lo", "up")
            _ip(*inside, "addr", "add", f"{node.ip}/24", "dev", "eth0")
            _ip(*inside, "link", "set", "eth0", "up")
            _ip(*inside, "route", "add", "224.0.0.0/4", "dev", "eth0")

    def _remove_leftovers(self) -> None:
        """Delete the namespaces of LANs whose process died without tearing down (killed),
        or whose pid was this one's: same names as ours could follow."""
        with _lock:
            live = {ns for lan in _alive if lan is not self for ns in lan._names()}
        for ns in _netns_names():
            match = re.fullmatch(r"ogl(\d+)-\d+-(?:sw|n\d+)", ns)
            if match is None or ns in live:
                continue
            pid = int(match[1])
            if pid == os.getpid() or not _pid_alive(pid):
                self._kill_rest(ns)
                _ip("netns", "delete", ns, check=False)

    def _names(self) -> list[str]:
        return [self.switch, *(node.ns for node in self.nodes)]

    def _add_netns(self, name: str) -> None:
        self._made.append(name)  # before: a failed add leaves nothing, deleting it is harmless
        _ip("netns", "add", name)

    # -- tearing down -------------------------------------------------------------------------

    def _teardown(self) -> None:
        """Undo whatever of ``_build`` was done; each step even if the one before failed."""
        try:
            try:
                for node in self.nodes:
                    while node._forwarders:
                        node._forwarders.popitem()[1].close()
            finally:
                self._stop_processes()
        finally:
            try:
                while self._made:
                    ns = self._made.pop()
                    self._kill_rest(ns)
                    _ip("netns", "delete", ns, check=False)
            finally:
                self._unguard()

    def _unguard(self) -> None:
        """Remove the host's blackhole route when no LAN of any process is left, if a LAN
        added it (``proto 231``: one there before the first LAN stays)."""
        with _lock:
            _alive.discard(self)
        with _host_lock():
            if not _any_lan():
                del_ours = ("route", "del", "blackhole", SUPERNET, "proto", GUARD_PROTO)
                _ip(*del_ours, check=False)

    def _stop_processes(self) -> None:
        """SIGTERM to what ``Node.popen`` started that still runs (to its session), SIGKILL
        after the grace. What an already reaped one left behind goes with ``_kill_rest``: its
        pid may be another's by now."""
        procs = [p for node in self.nodes for p in node._procs if p[0].poll() is None]
        for proc, session in procs:
            _kill(proc, session, signal.SIGTERM)
        deadline = time.monotonic() + self.grace
        for proc, session in procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _kill(proc, session, signal.SIGKILL)
                proc.wait(30)
            _kill(proc, session, signal.SIGKILL)  # what its session left behind
        for node in self.nodes:
            node._procs.clear()

    @staticmethod
    def _kill_rest(ns: str) -> None:
        """SIGKILL whatever still runs in ``ns`` (it would keep the namespace alive)."""
        done = _ip("netns", "pids", ns, check=False)
        for pid in {int(p) for p in done.stdout.split()} - {os.getpid()}:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


# -- the server ---------------------------------------------------------------------------------


def start_node_server(
    node: Node, tmp: Path, models_dir: Path, binary: EngineBinary, **env: str
) -> Server:
    """conftest's ``start_server`` with ``offgrid serve`` inside ``node`` on its loopback,
    reached through ``node.forward`` (so ``Server.url`` is on the host's 127.0.0.1).

    Its offline guard also lets it reach the LAN and the mDNS groups
    (``OFFGRID_TEST_ALLOW_NET``); ``env`` may say otherwise.
    """
    env = {"OFFGRID_TEST_ALLOW_NET": f"{node.subnet},{MDNS_NETS}", **env}
    return start_server(tmp, models_dir, binary, popen=node.popen, reach=node.forward, **env)


# -- namespaces ---------------------------------------------------------------------------------


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=60)
    if check and done.returncode:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done


def _netns_names() -> list[str]:
    return [line.split()[0] for line in _ip("netns", "list").stdout.splitlines() if line.strip()]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _any_lan() -> bool:
    """Whether a LAN of any process is up (its switch namespace is listed)."""
    return any(n.startswith("ogl") and n.endswith("-sw") for n in _netns_names())


@contextlib.contextmanager
def _host_lock() -> Iterator[None]:
    """Excludes other processes (and threads) from adding a LAN or removing the guard."""
    with HOST_LOCK.open("a") as file:
        fcntl.flock(file, fcntl.LOCK_EX)  # released with the file
        yield


def _guard() -> None:
    """``blackhole 10.231.0.0/16`` on the host (marked ours) unless it is there already."""
    done = _ip("route", "add", "blackhole", SUPERNET, "proto", GUARD_PROTO, check=False)
    if done.returncode:
        present = _ip("route", "show", SUPERNET, check=False).stdout
        if not present.startswith("blackhole"):
            raise RuntimeError(f"cannot guard {SUPERNET} on the host: {done.stderr or present}")


@functools.cache
def _setns() -> Callable[[int, int], int]:
    libc = ctypes.CDLL(None, use_errno=True)
    fn = libc.setns
    fn.argtypes = [ctypes.c_int, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


def _in_netns(ns: str, fn: Callable[[], _T]) -> _T:
    """``fn()`` in a fresh thread that first entered the network namespace ``ns``.

    Fresh because setns(2) moves only the calling thread and for good: a pooled thread
    would carry the namespace into unrelated work.
    """
    result: list[_T] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            fd = os.open(f"/run/netns/{ns}", os.O_RDONLY | os.O_CLOEXEC)
            try:
                if _setns()(fd, _CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns into {ns}: {os.strerror(err)}")
            finally:
                os.close(fd)
            result.append(fn())
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=run, name=f"netns {ns}", daemon=True)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


def _no_dad() -> None:
    """Turn off IPv6 duplicate address detection on this namespace's eth0 (called inside)."""
    path = Path("/proc/sys/net/ipv6/conf/eth0/accept_dad")
    if path.exists():  # /proc/sys/net shows the calling thread's namespace
        path.write_text("0")


def _kill(proc: subprocess.Popen[Any], session: bool, sig: int) -> None:
    """``sig`` to the process's session (when ``Node.popen`` gave it one), else to it alone.

    A group's id is not reused while any member lives, so right after we reaped the leader
    the signal still reaches only what it left behind.
    """
    with contextlib.suppress(ProcessLookupError):
        if session:
            os.killpg(proc.pid, sig)
        elif proc.poll() is None:
            proc.send_signal(sig)


# -- the relay ----------------------------------------------------------------------------------


class _Forwarder:
    """Host 127.0.0.1:<port> → ``host:port`` inside a namespace, one thread pair a link."""

    def __init__(self, ns: str, host: str, port: int) -> None:
        self.ns, self.target = ns, (host, port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._closed = False
        self._start(self._accept, f"forward :{self.port} → {ns} {host}:{port}")

    def close(self) -> None:
        """Stop accepting and reset every open connection; wait for the threads."""
        with self._lock:
            self._closed = True
            socks = list(self._open)
        with contextlib.suppress(OSError):  # wakes accept(); close() alone would not
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        for sock in socks:
            _abort(sock, socket.SHUT_RDWR)  # RDWR also wakes a send blocked on a slow reader
        for thread in list(self._threads):
            thread.join(10)

    def _start(self, target: Callable[..., None], name: str, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()

    def _track(self, sock: socket.socket) -> bool:
        with self._lock:
            if self._closed:
                return False
            self._open.add(sock)
            return True

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            if not self._track(client):
                client.close()
                return
            self._start(self._serve, f"forward :{self.port} link", client)

    def _serve(self, client: socket.socket) -> None:
        inner: socket.socket | None = None
        try:
            inner = _in_netns(self.ns, socket.socket)
            if not self._track(inner):
                return
            inner.connect(self.target)
            for end in (client, inner):
                end.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            _abort(client)  # nothing listens inside (yet): the client sees a reset
        else:
            failed = threading.Event()
            back = threading.Thread(
                target=_pipe, args=(inner, client, failed), name="forward back", daemon=True
            )
            back.start()
            _pipe(client, inner, failed)
            back.join()
        finally:
            for sock in (client, inner):
                if sock is not None:
                    with self._lock:
                        self._open.discard(sock)
                    sock.close()


def _pipe(src: socket.socket, dst: socket.socket, failed: threading.Event) -> None:
    """Copy ``src`` to ``dst`` as bytes come; pass EOF on as a half-close, an error (a reset)
    on as a reset of both sides."""
    try:
        while data := src.recv(_BUFFER):
            dst.sendall(data)
        if not failed.is_set():
            dst.shutdown(socket.SHUT_WR)
    except OSError:
        failed.set()
        _abort(src)
        _abort(dst)


def _abort(sock: socket.socket, how: int = socket.SHUT_RD) -> None:
    """Make the socket's close send a reset, and wake a recv blocked on it.

    SHUT_RD sends nothing (the peer gets the reset alone); SHUT_RDWR sends a FIN first but
    also wakes a blocked send. The other direction's thread then sees EOF and ``failed``.
    """
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.shutdown(how)


FLEET_TOKEN = "fleet-secret-0123456789"


def start_loopback_node(
    tmp: Path, name: str, port: int, binary: EngineBinary, **env: str
) -> Server:
    """A server with P2P on loopback only (no namespace, no discovery): node ``node-NAME``
    in ``tmp/NAME`` (its ``models`` folder must exist), its peer listener on ``port``, the
    fleet token ``FLEET_TOKEN``; ``env`` may say otherwise."""
    settings = {
        "OFFGRID_P2P": "1",
        "OFFGRID_P2P_HOST": "127.0.0.1",
        "OFFGRID_P2P_PORT": str(port),
        "OFFGRID_P2P_DISCOVERY": "0",
        "OFFGRID_P2P_TOKEN": FLEET_TOKEN,
        "OFFGRID_NODE_NAME": f"node-{name}",
        **env,
    }
    return start_server(tmp / name, tmp / name / "models", binary, **settings)
