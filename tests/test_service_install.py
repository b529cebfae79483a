"""install.sh and uninstall.sh under a real systemd, with no network (issue 15).

One container (tests/nspawn.py: systemd-nspawn over an overlay of this machine's root,
``--private-network``: a loopback and no route out, this machine's local pip sources and
caches hidden) is booted for the module, and the install is done once in it, offline: the
wheelhouse built here (cached under the engine cache), the engine build already made here
(``--engine``), the starter model (``--models``). The tests then check, in order, what an
administrator relies on: the unit is active and scores as the unit file does, ``/health``
and a chat answer, the server runs as ``offgrid``, stop leaves no engine, restart comes back,
a second install upgrades and keeps models and settings, uninstall keeps the data, purge
removes it. They share the one machine, so they run in this file's order.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import REAL_ENV
from nspawn import Machine, local_pip_sources, nspawn_available
from offgrid.config import load_settings
from offgrid.engine.build import EngineBinary
from offgrid.models.starter import STARTER

UNAVAILABLE = nspawn_available()
pytestmark = [
    pytest.mark.skipif(UNAVAILABLE is not None, reason=f"no container: {UNAVAILABLE}"),
    pytest.mark.timeout(600),
]

ROOT = Path(__file__).resolve().parents[1]
SOURCE_FILES = ("src", "pyproject.toml", "README.md", "deploy", "install.sh", "uninstall.sh")
SRC, WHEELS, ENGINE, MODELS = "/mnt/offgrid-src", "/mnt/wheelhouse", "/mnt/engine", "/mnt/models"
INSTALL = f"{SRC}/install.sh --cpu-only --wheelhouse {WHEELS}"
UNIT = "offgrid-llm"
URL = "http://127.0.0.1:11611"
PY = "/usr/bin/python3"  # the one install.sh needs too; the service venv goes with uninstall
MARKER = "# kept across upgrades: test marker 5b1f"
MAX_EXPOSURE = 1.5
# A box that never had OffGrid: whatever this machine has of it is hidden in the container
# (with this machine's local pip sources), the engine and model caches included.
NOT_THERE = (
    "/opt/offgrid",
    "/etc/offgrid",
    "/var/lib/offgrid",
    "/var/cache/offgrid",
    "/usr/local/bin/offgrid",
    "/etc/systemd/system/offgrid-llm.service",
    "/root/.cache/offgrid",
    "/root/.local/share/offgrid",
)


# -- what the install needs, made on the host ------------------------------------------------


def _system_python() -> str:
    """The python3 install.sh builds the venv from, if it has pip; else this one (the
    wheels must match the target's interpreter; both are CPython 3.11 here)."""
    probe = ["/usr/bin/python3", "-m", "pip", "--version"]
    if Path(probe[0]).exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return probe[0]
    return sys.executable


def _wheelhouse() -> Path:
    """Wheels of every dependency and of the build backend, for an install with no index.

    Built once with the host's pip (which may reach the package index) and cached under
    the engine cache, keyed by the dependencies, the build requirements and the python.
    """
    python = _system_python()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    tag = subprocess.run(
        [python, "-c", "import sys; print(f'cp{sys.version_info[0]}{sys.version_info[1]}')"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    wanted = sorted(project["project"]["dependencies"]) + project["build-system"]["requires"]
    key = hashlib.sha256("\n".join([tag, *wanted]).encode()).hexdigest()[:16]
    cache = load_settings(REAL_ENV).cache_dir / "wheelhouse" / f"{tag}-{key}"
    if (cache / "COMPLETE").is_file():
        return cache
    work = cache.with_name(cache.name + ".work")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    argv = [python, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(work), str(ROOT)]
    argv += project["build-system"]["requires"]
    env = {**REAL_ENV, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, f"building the wheelhouse failed:\n{done.stdout}\n{done.stderr}"
    for own in work.glob("offgrid-*.whl"):  # the project itself is built from its source
        own.unlink()
    (work / "COMPLETE").write_text("\n".join(wanted) + "\n")
    shutil.rmtree(cache, ignore_errors=True)
    work.rename(cache)
    return cache


def _snapshot(dest: Path) -> Path:
    """The files install.sh copies, as they are now: other work in the tree cannot change
    them halfway through the test, and a checkout outside the root file system (which the
    overlay does not show) is bound in all the same."""
    dest.mkdir()
    for name in SOURCE_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dest / name)
    return dest


def _models(store: Path, dest: Path) -> Path:
    dest.mkdir()
    try:
        os.link(store / STARTER.file_name, dest / STARTER.file_name)
    except OSError:  # another file system
        shutil.copy2(store / STARTER.file_name, dest / STARTER.file_name)
    return dest


# -- the machine --------------------------------------------------------------------------------


@dataclass
class Installed:
    machine: Machine
    engine: str  # the engine build folder on the host
    figures: dict[str, float] = field(default_factory=dict)


def _http(m: Machine, path: str, body: object = None, *, timeout: float = 120) -> tuple[int, str]:
    """(status, body) of a request to the service, made inside (status 0: no answer)."""
    script = """
import json, sys, urllib.error, urllib.request
url, body = sys.argv[1], sys.argv[2]
req = urllib.request.Request(url, data=body.encode() or None,
                             headers={"Content-Type": "application/json"})
try:
    with urllib.request.urlopen(req, timeout=float(sys.argv[3])) as r:
        print(json.dumps([r.status, r.read().decode()]))
except urllib.error.HTTPError as e:
    print(json.dumps([e.code, e.read().decode()]))
except OSError as e:
    print(json.dumps([0, str(e)]))
"""
    payload = "" if body is None else json.dumps(body)
    args = " ".join(_q(a) for a in (f"{URL}{path}", payload, str(timeout)))
    done = m.run(f"{PY} -c {_q(script)} {args}", timeout=timeout + 30)
    status, text = json.loads(done.stdout.strip().splitlines()[-1])
    return int(status), str(text)


def _q(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def _healthy(m: Machine) -> bool:
    status, text = _http(m, "/health", timeout=5)
    return status == 200 and json.loads(text)["status"] == "ok"


def _first_token(m: Machine) -> tuple[float, str]:
    """Seconds to the first streamed token of a chat (the model loads on demand), and the
    whole reply."""
    script = """
import json, sys, time, urllib.request
body = {"model": sys.argv[2], "stream": True, "max_tokens": 24, "temperature": 0,
        "messages": [{"role": "user", "content": "Say hello."}]}
req = urllib.request.Request(sys.argv[1], data=json.dumps(body).encode(),
                             headers={"Content-Type": "application/json"})
start, first, text = time.monotonic(), None, ""
with urllib.request.urlopen(req, timeout=120) as r:
    for line in r:
        if line.startswith(b"data: {"):
            delta = json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
            if delta and first is None:
                first = time.monotonic() - start
            text += delta
print(json.dumps([first, text]))
"""
    url = f"{URL}/v1/chat/completions"
    done = m.run(f"{PY} -c {_q(script)} {_q(url)} {_q(STARTER.model_id)}", timeout=180)
    first, text = json.loads(done.stdout.strip().splitlines()[-1])
    assert first is not None, f"no token came: {done.stdout}"
    return float(first), str(text)


def _main_pid(m: Machine) -> int:
    return int(m.run(f"systemctl show -p MainPID --value {UNIT}").stdout.strip())


def _engines(m: Machine) -> list[str]:
    """The llama-server processes in the container: 'pid cgroup' lines."""
    out = m.run("for p in $(pgrep -x llama-server); do echo $p $(cat /proc/$p/cgroup); done")
    return out.stdout.split("\n")[:-1]


def _install(m: Machine, extra: str = "") -> float:
    started = time.monotonic()
    done = m.run(f"{INSTALL} {extra}", timeout=600)
    assert "== Done in" in done.stdout, done.stdout + done.stderr
    return time.monotonic() - started


@pytest.fixture(scope="module")
def installed(
    tmp_path_factory: pytest.TempPathFactory, engine_binary: EngineBinary, model_store: Path
) -> Iterator[Installed]:
    """A booted machine with the service installed once, offline, and its figures."""
    tmp = tmp_path_factory.mktemp("service")
    engine = engine_binary.path.parent.parent  # the build folder: bin/, ENGINE.json
    assert (engine / "bin" / "llama-server").is_file(), engine
    binds = {
        str(_snapshot(tmp / "src")): SRC,
        str(_wheelhouse()): WHEELS,
        str(engine): ENGINE,
        str(_models(model_store, tmp / "models")): MODELS,
    }
    started = time.monotonic()
    hide = (*local_pip_sources(), *NOT_THERE)
    with Machine(tmp / "machine", bind_ro=binds, hide=hide) as m:
        booted = time.monotonic() - started
        # Offline means offline: no route out, and pip finds no local source of its own.
        assert m.run("ip -4 route show").stdout.strip() == ""
        assert "exists: True" not in m.run("python3 -m pip config debug").stdout
        # A dry run changes nothing; without root the installer refuses.
        dry = m.run(f"{INSTALL} --engine {ENGINE} --models {MODELS} --dry-run")
        assert "== Checking the system" in dry.stdout and "Dry run done" in dry.stdout
        for absent in ("id offgrid", "ls /opt/offgrid", "ls /etc/offgrid", "ls /var/lib/offgrid"):
            assert m.run(absent, check=False).returncode != 0, f"the dry run made it: {absent}"
        refused = m.run(f"runuser -u nobody -- {INSTALL}", check=False)
        assert refused.returncode != 0 and "run it as root" in refused.stderr

        install = _install(m, f"--engine {ENGINE} --models {MODELS}")
        first, text = _first_token(m)
        figures = {"boot_s": booted, "install_s": install, "first_token_after_install_s": first}
        figures["install_to_first_token_s"] = install + first
        print(f"\nservice install figures: {json.dumps(figures)}; reply {text!r}")
        yield Installed(m, str(engine), figures)


# -- the tests, in order --------------------------------------------------------------------------


def test_installed_service_is_active_and_answers_health_and_chat(installed: Installed) -> None:
    m = installed.machine
    assert m.run(f"systemctl is-active {UNIT}").stdout.strip() == "active"
    assert m.run(f"systemctl is-enabled {UNIT}").stdout.strip() == "enabled"
    assert _healthy(m)
    status, text = _http(
        m,
        "/v1/chat/completions",
        {
            "model": STARTER.model_id,
            "messages": [{"role": "user", "content": "What is 2+2?"}],
            "max_tokens": 16,
        },
    )
    assert status == 200, text
    reply = json.loads(text)
    assert reply["model"] == STARTER.model_id and reply["choices"][0]["message"]["content"]
    # The engine is the service's child, in its cgroup.
    engines = _engines(m)
    assert len(engines) == 1 and f"{UNIT}.service" in engines[0], engines


def test_installed_files_belong_where_the_unit_expects(installed: Installed) -> None:
    m = installed.machine
    model = f"/var/lib/offgrid/models/{STARTER.file_name}"
    assert m.run(f"stat -c %U {model}").stdout.strip() == "offgrid"
    assert m.run("stat -c '%U:%G %a' /etc/offgrid/env").stdout.strip() == "root:offgrid 640"
    env = m.run("cat /etc/offgrid/env").stdout
    assert "OFFGRID_LLAMA_SERVER=/opt/offgrid/engine/bin/llama-server" in env.splitlines()
    assert m.run("test -x /opt/offgrid/engine/bin/llama-server && id -u offgrid").returncode == 0
    assert m.run("getent passwd offgrid | cut -d: -f6,7").stdout.strip() == (
        "/var/lib/offgrid:/usr/sbin/nologin"
    )
    # The venv is the system python's, which ProtectHome does not hide.
    assert m.run("readlink -f /opt/offgrid/venv/bin/python").stdout.startswith("/usr/")
    # `offgrid` on every user's PATH shows the service's models (root runs it as offgrid).
    assert STARTER.model_id in m.run("cd / && offgrid list", env={"COLUMNS": "200"}).stdout
    # Other users: what asks the server works, the service's registry needs root.
    wide = {"COLUMNS": "200"}  # rich cuts the table to 80 columns on a pipe
    assert STARTER.model_id in m.run("runuser -u nobody -- offgrid ps", env=wide).stdout
    refused = m.run("cd / && runuser -u nobody -- offgrid list", check=False)
    assert refused.returncode == 1 and "sudo offgrid list" in refused.stderr
    assert m.run("ls /opt/offgrid/source").stdout.split() == sorted(SOURCE_FILES)


def test_main_process_runs_as_offgrid(installed: Installed) -> None:
    m = installed.machine
    pid = _main_pid(m)
    uids = m.run(f"awk '/^Uid:/ {{print $2, $3}}' /proc/{pid}/status").stdout.split()
    offgrid = m.run("id -u offgrid").stdout.strip()
    assert uids == [offgrid, offgrid]
    assert m.run(f"ps -o user= -p {pid}").stdout.strip() == "offgrid"


def test_doctor_finds_nothing_wrong_and_logs_read_the_journal(installed: Installed) -> None:
    """Issue 15: `offgrid doctor` checks the installed service line by line; `offgrid logs`
    reads its journal, with one line per request and no prompt in it."""
    m = installed.machine
    status, _ = _http(
        m,
        "/v1/chat/completions",
        {
            "model": STARTER.model_id,
            "messages": [{"role": "user", "content": "kumquat"}],
            "max_tokens": 8,
        },
    )
    assert status == 200
    doctor = m.run("cd / && offgrid doctor", check=False)
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    for check in ("config", "service", "port", "health", "engine", "models", "disk", "gpu"):
        assert re.search(rf"^ok +{check} ", doctor.stdout, re.M), doctor.stdout
    logs = m.run("offgrid logs -n 200").stdout
    assert "route=/v1/chat/completions" in logs and f"model={STARTER.model_id}" in logs, logs
    assert "kumquat" not in logs


def test_security_of_the_installed_unit_under_systemd(installed: Installed) -> None:
    """Scored by the container's running systemd on the unit as loaded (drop-ins and all),
    and offline on the installed file; verify silent now that ExecStart exists."""
    m = installed.machine
    for how, target in (
        ("", f"{UNIT}.service"),
        ("--offline=yes", f"/etc/systemd/system/{UNIT}.service"),
    ):
        report = m.run(f"systemd-analyze security --no-pager {how} {target}").stdout
        found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", report)
        assert found and float(found.group(1)) <= MAX_EXPOSURE, report
        installed.figures[f"exposure_{'offline' if how else 'running'}"] = float(found.group(1))
    verify = m.run(f"systemd-analyze verify /etc/systemd/system/{UNIT}.service", check=False)
    assert verify.returncode == 0 and verify.stdout + verify.stderr == ""


def test_stop_leaves_no_engine_and_restart_comes_back(installed: Installed) -> None:
    m = installed.machine
    assert _engines(m), "an engine runs (loaded by the chat)"
    started = time.monotonic()
    m.run(f"systemctl stop {UNIT}")
    installed.figures["stop_s"] = time.monotonic() - started
    assert m.run(f"systemctl is-active {UNIT}", check=False).stdout.strip() == "inactive"
    assert _engines(m) == []  # at once: systemd waited for the cgroup to empty
    assert m.run("pgrep -u offgrid", check=False).stdout == ""
    assert not _healthy(m)

    before = _main_pid(m)
    started = time.monotonic()
    m.run(f"systemctl restart {UNIT}")  # Type=notify: returns once READY
    installed.figures["restart_to_ready_s"] = time.monotonic() - started
    assert _healthy(m)  # at once
    assert _main_pid(m) not in (0, before)


def test_restart_while_serving_leaves_no_orphan_engine(installed: Installed) -> None:
    m = installed.machine
    _first_token(m)
    (old,) = _engines(m)
    m.run(f"systemctl restart {UNIT}")
    assert old.split()[0] not in {e.split()[0] for e in _engines(m)}
    assert _healthy(m)


def test_reinstall_upgrades_in_place_and_keeps_models_and_settings(installed: Installed) -> None:
    m = installed.machine
    model = f"/var/lib/offgrid/models/{STARTER.file_name}"
    m.run(f"echo '{MARKER}' >> /etc/offgrid/config.yaml")
    m.run("echo OFFGRID_LOG_LEVEL=info >> /etc/offgrid/env")
    m.run("echo '{}' > /var/lib/offgrid/kept.json && chown offgrid: /var/lib/offgrid/kept.json")
    # Same files (inode, size, mtime, owner), not copies; the registry the same database.
    kept = f"stat -c '%i %s %Y %U' {model} /var/lib/offgrid/kept.json"
    kept += "; stat -c '%i %U' /var/lib/offgrid/registry.sqlite"
    before, pid = m.run(kept).stdout, _main_pid(m)

    # No --engine: the installed one stays. The same models again: already there, skipped.
    installed.figures["upgrade_s"] = _install(m, f"--models {MODELS}")

    assert m.run(kept).stdout == before
    assert MARKER in m.run("cat /etc/offgrid/config.yaml").stdout
    env = m.run("cat /etc/offgrid/env").stdout.splitlines()
    assert "OFFGRID_LOG_LEVEL=info" in env
    assert "OFFGRID_LLAMA_SERVER=/opt/offgrid/engine/bin/llama-server" in env
    assert m.run(f"systemctl is-active {UNIT}").stdout.strip() == "active"
    assert _main_pid(m) != pid  # the new code runs
    assert _healthy(m)
    assert STARTER.model_id in m.run("offgrid list", env={"COLUMNS": "200"}).stdout
    _first_token(m)


def test_uninstall_removes_the_service_and_keeps_the_data(installed: Installed) -> None:
    m = installed.machine
    out = m.run("/opt/offgrid/source/uninstall.sh").stdout
    assert "Kept: /var/lib/offgrid" in out
    assert m.run(f"systemctl cat {UNIT}", check=False).returncode != 0
    for gone in (
        "/etc/systemd/system/offgrid-llm.service",
        "/opt/offgrid",
        "/usr/local/bin/offgrid",
    ):
        assert m.run(f"test -e {gone}", check=False).returncode != 0, gone
    assert _engines(m) == [] and m.run("pgrep -u offgrid", check=False).stdout == ""
    model = f"/var/lib/offgrid/models/{STARTER.file_name}"
    assert (
        m.run(f"test -s {model} && id offgrid && test -f /etc/offgrid/config.yaml").returncode == 0
    )
    assert MARKER in m.run("cat /etc/offgrid/config.yaml").stdout
    # Again: nothing left to do, and that is fine.
    assert "already gone" in m.run(f"{SRC}/uninstall.sh").stdout


def test_uninstall_purge_removes_data_settings_and_user(installed: Installed) -> None:
    m = installed.machine
    m.run(f"{SRC}/uninstall.sh --purge")
    for gone in ("/var/lib/offgrid", "/var/cache/offgrid", "/etc/offgrid"):
        assert m.run(f"test -e {gone}", check=False).returncode != 0, gone
    assert m.run("id offgrid", check=False).returncode != 0
    assert m.run("getent group offgrid", check=False).returncode != 0


def test_install_without_engine_builds_it_into_the_service_cache(installed: Installed) -> None:
    """The branch that builds the engine (``offgrid setup`` as offgrid, into
    /var/cache/offgrid): with a finished build of the same sources already there, as a
    first install leaves it, setup finds it and compiles nothing, and the service runs it.
    Then a purge from a full install."""
    m = installed.machine
    cache = "/var/cache/offgrid/engine"
    m.run(f"mkdir -p {cache} && cp -a {ENGINE} {cache}/{Path(installed.engine).name}")
    m.run("useradd --system --user-group --home-dir /var/lib/offgrid offgrid")
    m.run("chown -R offgrid: /var/cache/offgrid")

    out = m.run(f"{INSTALL} --models {MODELS}", timeout=600).stdout
    assert "building it once into /var/cache/offgrid/engine" in out and "== Done in" in out
    assert "OFFGRID_LLAMA_SERVER" not in m.run("grep -v '^#' /etc/offgrid/env || true").stdout
    _first_token(m)
    (engine,) = _engines(m)
    binary = m.run(f"readlink /proc/{engine.split()[0]}/exe").stdout.strip()
    assert binary == f"{cache}/{Path(installed.engine).name}/bin/llama-server"

    m.run(f"{SRC}/uninstall.sh --purge")
    for gone in ("/opt/offgrid", "/var/lib/offgrid", "/var/cache/offgrid", "/etc/offgrid"):
        assert m.run(f"test -e {gone}", check=False).returncode != 0, gone
    assert _engines(m) == [] and m.run("id offgrid", check=False).returncode != 0
    print(f"\nservice install figures: {json.dumps(installed.figures)}")
