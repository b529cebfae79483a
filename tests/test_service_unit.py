"""The systemd unit (deploy/offgrid-llm.service) and the sd_notify protocol.

The unit is scored and verified by the real ``systemd-analyze`` (no running systemd
needed). sd_notify is checked against real AF_UNIX datagram sockets, a path one and an
abstract one, reading what systemd would read.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import pytest

from offgrid.service.notify import notify, watchdog, watchdog_interval

UNIT = Path(__file__).resolve().parents[1] / "deploy" / "offgrid-llm.service"
EXEC_START = "/opt/offgrid/venv/bin/offgrid"  # where the installer puts the venv
MAX_EXPOSURE = 1.5

needs_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze is not installed (apt-get install systemd)",
)


# -- the unit -------------------------------------------------------------------------------


def _exposure(unit: Path) -> tuple[float, str]:
    """The "Overall exposure level" systemd-analyze gives ``unit``, and its whole report."""
    done = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    report = done.stdout + done.stderr
    assert done.returncode == 0, report
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", report)
    assert found, report
    return float(found.group(1)), report


def _can_unshare() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = ["unshare", "--mount", "--map-root-user", "true"]
    return subprocess.run(probe, capture_output=True, timeout=30).returncode == 0


def _verify(unit: Path, tmp_path: Path, *, namespace: bool | None = None) -> str:
    """What ``systemd-analyze verify`` prints about ``unit`` (stdout and stderr together).

    verify warns that ExecStart is missing on a machine without the installed venv. Where a
    private mount namespace can be made, the file itself is verified with a tmpfs on /opt
    that holds a stub ``offgrid`` (nothing outside the namespace sees it). Otherwise a copy
    is verified whose ExecStart path, and nothing else, points at a stub in ``tmp_path``.
    ``namespace`` forces one way (None: the first that works here).
    """
    if namespace is None:
        namespace = _can_unshare()
    if namespace:
        script = (
            'mount -t tmpfs tmpfs /opt && mkdir -p "${1%/*}" && printf "#!/bin/sh\\n" > "$1" '
            '&& chmod 755 "$1" && exec systemd-analyze verify "$2"'
        )
        argv = ["unshare", "--mount", "--map-root-user", "sh", "-c", script, "sh"]
        argv += [EXEC_START, str(unit)]
    else:
        stub = tmp_path / "offgrid"
        stub.write_text("#!/bin/sh\n")
        stub.chmod(0o755)
        text = unit.read_text()
        assert text.count(EXEC_START) == 1, "ExecStart is the only place naming the venv"
        copy = tmp_path / "copy" / unit.name
        copy.parent.mkdir()
        copy.write_text(text.replace(EXEC_START, str(stub)))
        argv = ["systemd-analyze", "verify", str(copy)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    return done.stdout + done.stderr + (f"(exit status {done.returncode})" * bool(done.returncode))


@needs_analyze
def test_unit_exposure_is_at_most_1_5() -> None:
    score, report = _exposure(UNIT)
    assert score <= MAX_EXPOSURE, report


@needs_analyze
@pytest.mark.parametrize("namespace", [True, False], ids=["file-itself", "copy"])
def test_unit_verify_prints_nothing(tmp_path: Path, namespace: bool) -> None:
    if namespace and not _can_unshare():
        pytest.skip("no private mount namespace here (unshare); the copy variant still runs")
    assert _verify(UNIT, tmp_path, namespace=namespace) == ""


@needs_analyze
def test_verify_check_catches_a_warning(tmp_path: Path) -> None:
    """The check above would fail on a warning: a copy with an unknown key is reported."""
    bad = tmp_path / "bad" / UNIT.name
    bad.parent.mkdir()
    bad.write_text(UNIT.read_text().replace("[Service]\n", "[Service]\nNoSuchKey=1\n", 1))
    assert "NoSuchKey" in _verify(bad, tmp_path)


def _directives(unit: Path) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            values.setdefault(key, []).append(value)
    return values


def test_unit_runs_the_installed_server_as_a_notify_service() -> None:
    unit = _directives(UNIT)
    assert unit["ExecStart"] == [f"{EXEC_START} serve"]
    assert unit["Type"] == ["notify"] and unit["NotifyAccess"] == ["main"]
    assert unit["User"] == ["offgrid"] and "DynamicUser" not in unit
    assert "PrivateDevices" not in unit and "ProcSubset" not in unit  # GPU, /proc/meminfo
    env = " ".join(unit["Environment"]).split()
    assert "OFFGRID_MODELS_DIR=/var/lib/offgrid/models" in env
    assert "OFFGRID_CONFIG=/etc/offgrid/config.yaml" in env


def test_unit_environment_names_are_settings() -> None:
    """Every OFFGRID_* the unit sets is a setting that config.py reads."""
    from offgrid.config import FIELDS

    known = {s.env for s in FIELDS} | {"OFFGRID_CONFIG"}
    names = {
        item.partition("=")[0]
        for line in _directives(UNIT)["Environment"]
        for item in line.split()
        if item.startswith("OFFGRID_")
    }
    assert names and names <= known


# -- sd_notify --------------------------------------------------------------------------------


def _receiver(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(5.0)  # a deadline for recv, not a sleep
    return sock


@pytest.fixture
def path_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, dict[str, str]]]:
    """A datagram socket bound to a path, and the environment that names it."""
    path = str(tmp_path / "notify")
    with _receiver(path) as sock:
        yield sock, {"NOTIFY_SOCKET": path}


@pytest.fixture
def abstract_socket() -> Iterator[tuple[socket.socket, dict[str, str]]]:
    """A datagram socket in the abstract namespace, named ``@…`` as systemd names it."""
    name = f"offgrid-test-{uuid.uuid4().hex}"
    with _receiver("\0" + name) as sock:
        yield sock, {"NOTIFY_SOCKET": "@" + name}


def _nothing_queued(sock: socket.socket) -> bool:
    """True if no datagram waits. A datagram is queued before sendto returns, so this is
    exact right after a call, not a guess."""
    sock.setblocking(False)
    try:
        sock.recv(4096)
    except BlockingIOError:
        return True
    finally:
        sock.settimeout(5.0)
    return False


def test_notify_sends_one_datagram_to_a_path_socket(
    path_socket: tuple[socket.socket, dict[str, str]],
) -> None:
    sock, env = path_socket
    assert notify("READY=1", "STATUS=serving on 127.0.0.1:11611", environ=env) is True
    assert sock.recv(4096) == b"READY=1\nSTATUS=serving on 127.0.0.1:11611"
    assert _nothing_queued(sock)


def test_notify_reaches_an_abstract_socket(
    abstract_socket: tuple[socket.socket, dict[str, str]],
) -> None:
    sock, env = abstract_socket
    assert notify("STOPPING=1", environ=env) is True
    assert sock.recv(4096) == b"STOPPING=1"


def test_notify_keeps_a_status_with_newlines_to_one_assignment(
    path_socket: tuple[socket.socket, dict[str, str]],
) -> None:
    sock, env = path_socket
    assert notify("STATUS=engine failed:\nout of memory", environ=env)
    assert sock.recv(4096) == b"STATUS=engine failed: out of memory"


def test_notify_without_notify_socket_sends_nothing(
    path_socket: tuple[socket.socket, dict[str, str]],
) -> None:
    sock, _ = path_socket
    assert notify("READY=1", environ={}) is False
    assert notify("READY=1", environ={"NOTIFY_SOCKET": ""}) is False
    assert _nothing_queued(sock)


def test_notify_reads_os_environ_by_default(
    path_socket: tuple[socket.socket, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, env = path_socket
    monkeypatch.setenv("NOTIFY_SOCKET", env["NOTIFY_SOCKET"])
    assert notify("READY=1") is True
    assert sock.recv(4096) == b"READY=1"
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert notify("READY=1") is False


def test_notify_to_a_missing_socket_returns_false(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    missing = {"NOTIFY_SOCKET": str(tmp_path / "no-such-socket")}
    with caplog.at_level(logging.DEBUG, logger="offgrid.service.notify"):
        assert notify("READY=1", environ=missing) is False
        unbound = {"NOTIFY_SOCKET": "@no-such-" + uuid.uuid4().hex}  # refused: nobody bound it
        assert notify("READY=1", environ=unbound) is False
    assert "no-such-socket" in caplog.text


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "me"}, None),
        ({"WATCHDOG_USEC": "500000"}, 0.25),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "30s"}, None),
    ],
)
def test_watchdog_interval_is_half_of_watchdog_usec_for_this_process(
    environ: dict[str, str], expected: float | None
) -> None:
    assert watchdog_interval(environ) == expected


async def _recv(sock: socket.socket, timeout: float = 5.0) -> bytes:
    return await asyncio.wait_for(asyncio.get_running_loop().sock_recv(sock, 4096), timeout)


def test_watchdog_pings_every_interval_until_stopped(
    path_socket: tuple[socket.socket, dict[str, str]],
) -> None:
    sock, env = path_socket
    sock.setblocking(False)
    interval = 0.05

    async def scenario() -> list[float]:
        stop = asyncio.Event()
        task = asyncio.create_task(watchdog(interval, stop, environ=env))
        seen = []
        for _ in range(3):
            assert await _recv(sock) == b"WATCHDOG=1"
            seen.append(time.monotonic())
        stop.set()
        await asyncio.wait_for(task, 5.0)
        return seen

    seen = asyncio.run(scenario())
    assert all(b - a >= interval * 0.9 for a, b in pairwise(seen))


def test_watchdog_returns_when_stopped_without_waiting_out_the_interval(
    path_socket: tuple[socket.socket, dict[str, str]],
) -> None:
    sock, env = path_socket
    sock.setblocking(False)

    async def scenario() -> float:
        stop = asyncio.Event()
        task = asyncio.create_task(watchdog(3600.0, stop, environ=env))
        assert await _recv(sock) == b"WATCHDOG=1"  # the first ping comes at once
        started = time.monotonic()
        stop.set()
        await asyncio.wait_for(task, 5.0)
        return time.monotonic() - started

    assert asyncio.run(scenario()) < 1.0
    assert _nothing_queued(sock)


def test_watchdog_with_stop_already_set_sends_nothing(
    path_socket: tuple[socket.socket, dict[str, str]],
) -> None:
    sock, env = path_socket

    async def scenario() -> None:
        stop = asyncio.Event()
        stop.set()
        await asyncio.wait_for(watchdog(0.01, stop, environ=env), 5.0)

    asyncio.run(scenario())
    assert _nothing_queued(sock)


def test_watchdog_refuses_a_non_positive_interval() -> None:
    with pytest.raises(ValueError, match="positive"):
        asyncio.run(watchdog(0, asyncio.Event(), environ={}))
