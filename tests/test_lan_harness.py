"""The LAN harness of the peer tests (tests/lan.py) does what they rely on: nodes reach each
other and mDNS multicast crosses the bridge, the host cannot reach the LAN, ``forward``
streams promptly and passes half-closes and resets on, and nothing is left after exit."""

from __future__ import annotations

import errno
import importlib.util
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace

import psutil
import pytest
import requests

import lan as lan_module
from conftest import FAKE_ENGINE, OFFLINE_GUARD, wait_for
from lan import GUARD_PROTO, MDNS_NETS, SUPERNET, Lan, Node, available, start_node_server
from offgrid.engine.build import EngineBinary

UNAVAILABLE = available()
needs_lan = pytest.mark.skipif(UNAVAILABLE is not None, reason=str(UNAVAILABLE))
MDNS = ("224.0.0.251", 5353)


@pytest.fixture(scope="module")
def lan() -> Iterator[Lan]:
    if UNAVAILABLE is not None:
        pytest.skip(UNAVAILABLE)
    with Lan(2) as built:
        yield built


def netns_names() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def root_links() -> list[str]:
    out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    return sorted(line.split(":")[1].strip() for line in out.splitlines())


def serve_once(node: Node, handle: Callable[[socket.socket], None]) -> tuple[int, threading.Thread]:
    """A listener on the node's 127.0.0.1 whose one connection ``handle(conn)`` gets."""
    listener = node.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    def run() -> None:
        with listener:
            conn, _ = listener.accept()
            with conn:
                handle(conn)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return listener.getsockname()[1], thread


@needs_lan
def test_exit_leaves_nothing_behind() -> None:
    links = root_links()
    show = ["ip", "route", "show", SUPERNET]
    guard_before = subprocess.run(show, capture_output=True, text=True).stdout
    with Lan(2, grace=0.5) as net:
        ours = {net.switch, *(n.ns for n in net.nodes)}
        assert ours <= netns_names()
        node = net.nodes[0]
        ignore_term = "import signal; signal.signal(15, signal.SIG_IGN); print(); input()"
        stubborn = node.popen(
            [sys.executable, "-c", ignore_term], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        assert stubborn.stdout is not None
        stubborn.stdout.readline()  # SIGTERM is ignored from here on
        stray = node.exec(
            ["sh", "-c", "setsid sleep 60 >/dev/null 2>&1 & echo $!"],
            capture_output=True,
            text=True,
            check=True,
        )
        stray_pid = int(stray.stdout)
        forwarded = node.forward(8000)
    assert not ours & netns_names()
    assert root_links() == links
    assert stubborn.returncode == -9  # it ignored SIGTERM
    assert stubborn.stdin is not None
    stubborn.stdin.close()
    stubborn.stdout.close()

    def gone() -> bool:
        try:
            return psutil.Process(stray_pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    wait_for(gone, 5, "the process left running in the node to be killed")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", forwarded), timeout=2).close()
    with lan_module._host_lock():  # no LAN starts or ends meanwhile
        route = subprocess.run(show, capture_output=True, text=True).stdout
        if not lan_module._any_lan():  # the guard went with the last LAN (one not ours stays)
            assert f"proto {GUARD_PROTO}" not in route
            assert route == guard_before or "proto" in guard_before


@needs_lan
def test_a_failed_setup_is_undone(monkeypatch: pytest.MonkeyPatch) -> None:
    net = Lan(3)
    ours = {net.switch, *(n.ns for n in net.nodes)}
    seen: list[set[str]] = []

    def broken_second() -> None:
        seen.append(netns_names() & ours)
        if len(seen) == 2:
            raise OSError("broken on purpose")

    monkeypatch.setattr(lan_module, "_no_dad", broken_second)
    with pytest.raises(OSError, match="on purpose"), net:
        pass
    assert seen[-1] == {net.switch, net.nodes[0].ns, net.nodes[1].ns}  # it failed halfway
    assert not ours & netns_names()


def test_nodes_reach_each_other_and_nothing_else(lan: Lan) -> None:
    a, b = lan.nodes
    assert a.ip != b.ip and a.ip.startswith(lan.prefix + ".")
    with a.socket() as listener, b.socket() as client:
        listener.bind((a.ip, 0))
        listener.listen()
        client.settimeout(5)
        client.connect((a.ip, listener.getsockname()[1]))
        conn, peer = listener.accept()
        with conn:
            assert peer[0] == b.ip
            conn.sendall(b"hi")
            assert client.recv(2) == b"hi"
    # a process inside sees the node's own interfaces
    shown = b.exec(["ip", "-4", "-o", "addr", "show", "eth0"], capture_output=True, text=True)
    assert f"inet {b.ip}/24" in shown.stdout
    # no way out of the LAN: the nodes have no default route
    with a.socket() as out, pytest.raises(OSError) as err:
        out.connect(("198.51.100.1", 9))
    assert err.value.errno == errno.ENETUNREACH


def test_the_host_cannot_reach_the_lan(lan: Lan) -> None:
    route = subprocess.run(["ip", "route", "show", SUPERNET], capture_output=True, text=True)
    assert route.stdout.startswith("blackhole")
    with socket.socket() as sock, pytest.raises(OSError) as err:
        sock.connect((lan.nodes[0].ip, 9))
    assert err.value.errno == errno.EINVAL  # what a blackhole route answers


def test_mdns_multicast_crosses_the_bridge(lan: Lan) -> None:
    a, b = lan.nodes
    with b.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        rx.bind(MDNS)
        group = socket.inet_aton(MDNS[0]) + socket.inet_aton(b.ip)
        rx.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, group)
        rx.settimeout(5)
        with a.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            tx.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
            tx.sendto(b"query 1", MDNS)  # no IP_MULTICAST_IF: the 224.0.0.0/4 route picks eth0
            assert rx.recvfrom(64) == (b"query 1", (a.ip, tx.getsockname()[1]))
            a.link(False)  # cut off: not even a route to send by
            with pytest.raises(OSError) as err:
                tx.sendto(b"lost", MDNS)
            assert err.value.errno == errno.ENETUNREACH
            a.link(True)
            tx.sendto(b"query 2", MDNS)
            assert rx.recvfrom(64)[0] == b"query 2"


def test_mdns_ipv6_multicast_crosses_the_bridge(lan: Lan) -> None:
    a, b = lan.nodes
    group, port = "ff02::fb", 5353
    index_a = a.call(lambda: socket.if_nametoindex("eth0"))
    index_b = b.call(lambda: socket.if_nametoindex("eth0"))
    with b.socket(socket.AF_INET6, socket.SOCK_DGRAM) as rx:
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        rx.bind(("::", port))
        mreq = socket.inet_pton(socket.AF_INET6, group) + index_b.to_bytes(4, sys.byteorder)
        rx.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, mreq)
        rx.settimeout(5)
        with a.socket(socket.AF_INET6, socket.SOCK_DGRAM) as tx:
            tx.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
            tx.sendto(b"query 6", (group, port, 0, index_a))
            data, sender = rx.recvfrom(64)
            assert data == b"query 6" and sender[0].startswith("fe80::")


def test_forward_reaches_a_server_inside_the_node(lan: Lan, tmp_path: Path) -> None:
    a, b = lan.nodes
    (tmp_path / "hello.txt").write_text("hello from inside")
    argv = [sys.executable, "-m", "http.server", "--bind", "127.0.0.1"]
    proc = a.popen(
        [*argv, "--directory", str(tmp_path), "8000"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{a.forward(8000)}/hello.txt"

    def fetch() -> str | None:
        assert proc.poll() is None, "http.server exited"
        try:
            return requests.get(url, timeout=2).text
        except requests.ConnectionError:
            return None  # not listening yet: the forwarder resets the connection

    assert wait_for(fetch, 10, "http.server inside the node") == "hello from inside"
    with pytest.raises(requests.ConnectionError):  # b's loopback is b's own
        requests.get(f"http://127.0.0.1:{b.forward(8000)}/hello.txt", timeout=2)
    proc.terminate()
    proc.wait(10)


def test_forward_streams_promptly(lan: Lan) -> None:
    """Each event is read through the relay before the server is let to send the next: a
    relay that held bytes back would time the read out."""
    release = threading.Semaphore(0)
    waited: list[bool] = []

    def stream(conn: socket.socket) -> None:
        request = b""
        while not request.endswith(b"\r\n\r\n"):
            request += conn.recv(1024)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n")
        conn.sendall(b"Transfer-Encoding: chunked\r\n\r\n")
        for i in range(3):
            event = f"data: {i}\n\n".encode()
            conn.sendall(b"%x\r\n%s\r\n" % (len(event), event))
            waited.append(release.acquire(timeout=10))
        conn.sendall(b"0\r\n\r\n")

    node = lan.nodes[0]
    port, thread = serve_once(node, stream)
    url = f"http://127.0.0.1:{node.forward(port)}/events"
    got = []
    with requests.get(url, stream=True, timeout=5) as resp:
        for line in resp.iter_lines():
            if line:
                got.append(line)
                release.release()
    thread.join(10)
    assert got == [b"data: 0", b"data: 1", b"data: 2"] and waited == [True] * 3


def test_forward_passes_half_close_and_reset_on(lan: Lan) -> None:
    node = lan.nodes[1]

    def echo_upper(conn: socket.socket) -> None:
        data = b""
        while chunk := conn.recv(1024):
            data += chunk
        conn.sendall(data.upper())

    port, thread = serve_once(node, echo_upper)
    with socket.create_connection(("127.0.0.1", node.forward(port)), timeout=5) as sock:
        sock.sendall(b"half closed")
        sock.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := sock.recv(1024):
            reply += chunk
    thread.join(10)
    assert reply == b"HALF CLOSED"

    def reset(conn: socket.socket) -> None:
        conn.recv(1024)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    port, thread = serve_once(node, reset)
    with socket.create_connection(("127.0.0.1", node.forward(port)), timeout=5) as sock:
        sock.sendall(b"x")
        with pytest.raises(ConnectionResetError):
            sock.recv(1024)
    thread.join(10)


def test_a_server_runs_inside_a_node(lan: Lan, tmp_path: Path) -> None:
    node = lan.nodes[0]
    (tmp_path / "models").mkdir()
    fake = EngineBinary(Path(FAKE_ENGINE), "cpu", "test")
    srv = start_node_server(node, tmp_path, tmp_path / "models", fake)
    try:
        assert srv.url.startswith("http://127.0.0.1:")
        assert srv.env["OFFGRID_TEST_ALLOW_NET"] == f"{node.subnet},{MDNS_NETS}"
        assert (
            os.stat(f"/proc/{srv.proc.pid}/ns/net").st_ino
            == os.stat(f"/run/netns/{node.ns}").st_ino
        )
        assert srv.ps() == []
    finally:
        assert srv.stop() in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it handled


GUARDED = """
import socket, sys
ip, port = sys.argv[1], int(sys.argv[2])
socket.create_connection((ip, port), timeout=5).close()
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
    udp.sendto(b"q", ("224.0.0.251", 5353))
try:
    socket.create_connection(("198.51.100.1", 9), timeout=5)
except ConnectionRefusedError as exc:
    print(exc)
"""


def test_the_offline_guard_lets_a_node_reach_its_lan(lan: Lan, tmp_path: Path) -> None:
    a, b = lan.nodes
    log = tmp_path / "offline.log"
    env = {
        **os.environ,
        "PYTHONPATH": OFFLINE_GUARD,
        "OFFGRID_TEST_OFFLINE_LOG": str(log),
        "OFFGRID_TEST_ALLOW_NET": f"{b.subnet},{MDNS_NETS}",
    }
    with a.socket() as listener:
        listener.bind((a.ip, 0))
        listener.listen()
        argv = [sys.executable, "-c", GUARDED, a.ip, str(listener.getsockname()[1])]
        done = b.exec(argv, env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert "offline test: lookup 198.51.100.1:9 was not asked for" in done.stdout
    assert log.read_text() == "lookup 198.51.100.1:9\n"  # create_connection looks up first


def load_guard(monkeypatch: pytest.MonkeyPatch, allow: str, log: Path) -> ModuleType:
    """tests/offline_guard/sitecustomize.py loaded under another name, its hook not added
    (no log named at import: this process stays unguarded), then pointed at ``log``."""
    monkeypatch.delenv("OFFGRID_TEST_OFFLINE_LOG", raising=False)
    monkeypatch.setenv("OFFGRID_TEST_ALLOW_NET", allow)
    spec = importlib.util.spec_from_file_location(
        "offline_guard_under_test", Path(OFFLINE_GUARD) / "sitecustomize.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "_LOG", str(log))
    return module


def test_offline_guard_allows_the_listed_networks(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    log = tmp_path / "offline.log"
    guard = load_guard(monkeypatch, f" 10.231.7.0/24 ,{MDNS_NETS}", log)
    v4 = SimpleNamespace(family=socket.AF_INET)
    v6 = SimpleNamespace(family=socket.AF_INET6)
    for event, args in [
        ("socket.connect", (v4, ("10.231.7.2", 8000))),
        ("socket.sendto", (v4, ("224.0.0.251", 5353))),
        ("socket.sendto", (v6, ("ff02::fb", 5353, 0, 2))),
        ("socket.sendto", (v6, ("ff02::fb%eth0", 5353, 0, 2))),
        ("socket.connect", (v6, ("::ffff:10.231.7.9", 80, 0, 0))),
        ("socket.getaddrinfo", ("10.231.7.3", 80, 0, 0, 0)),
        ("socket.connect", (v4, ("127.0.0.1", 80))),
    ]:
        guard._hook(event, args)
    for event, args in [
        ("socket.connect", (v4, ("10.231.8.2", 8000))),
        ("socket.sendto", (v4, ("224.0.0.252", 5355))),
        ("socket.sendto", (v6, ("ff02::fc", 5353, 0, 2))),
        ("socket.getaddrinfo", ("peer.local", 80, 0, 0, 0)),
    ]:
        with pytest.raises(ConnectionRefusedError):
            guard._hook(event, args)
    assert len(log.read_text().splitlines()) == 4
    empty = load_guard(monkeypatch, "", log)
    with pytest.raises(ConnectionRefusedError):
        empty._hook("socket.connect", (v4, ("10.231.7.2", 8000)))
