"""``offgrid doctor``: SEED.md's troubleshooting section as one command.

Each check says ok, or what is wrong and the command that fixes it: the config, the
service, the port and health, the engine binary, the models folder as the service's user
sees it, disk space, the GPU and the LAN peers. Checks that do not apply here (no systemd,
no service user) say so and count as ok.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import socket
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from offgrid.config import Settings, load_settings
from offgrid.errors import OffGridError

__all__ = ["Check", "run_checks"]

UNIT = "offgrid-llm.service"
SERVICE_USER = "offgrid"
MIN_FREE = 2 * 1024**3  # the smallest useful model, and room for the registry


@dataclass(frozen=True)
class Check:
    """One line of the report: ``ok``, the detail, and for a problem the fix."""

    name: str
    ok: bool
    detail: str
    fix: str = ""


def _config(_settings: Settings) -> Check:
    try:
        load_settings()
    except OffGridError as exc:
        return Check("config", False, exc.message, "offgrid config validate PATH, then fix it")
    return Check("config", True, "valid")


def _service(_settings: Settings) -> Check:
    if shutil.which("systemctl") is None:
        return Check("service", True, "no systemd here: run `offgrid serve` yourself")
    state = _out(["systemctl", "is-active", UNIT])
    if state == "active":
        return Check("service", True, f"{UNIT} is active")
    enabled = _out(["systemctl", "is-enabled", UNIT])
    if enabled in ("", "not-found"):
        return Check("service", True, "not installed as a service (sudo ./install.sh does)")
    return Check(
        "service",
        False,
        f"{UNIT} is {state or 'unknown'}",
        f"sudo systemctl restart {UNIT}; see why: sudo journalctl -u {UNIT} -n 50",
    )


def _port(settings: Settings) -> Check:
    where = f"{settings.host}:{settings.port}"
    host = settings.reach_host
    try:
        with socket.create_connection((host, settings.port), timeout=2):
            pass
    except OSError as exc:
        return Check(
            "port",
            False,
            f"nothing answers on {where} ({exc.strerror or exc})",
            f"start the server: sudo systemctl start {UNIT}, or offgrid serve",
        )
    return Check("port", True, f"{where} accepts connections")


def _health(settings: Settings) -> Check:
    import httpx2

    url = f"http://{settings.reach_host}:{settings.port}"
    try:
        health = httpx2.get(f"{url}/health", timeout=5)
        ready = httpx2.get(f"{url}/readyz", timeout=30)
    except httpx2.HTTPError as exc:
        return Check("health", False, f"{url}/health: {exc}", "see the port check above")
    if health.status_code != 200 or "ok" not in health.text:
        return Check("health", False, f"/health answered {health.status_code}", "")
    if ready.status_code != 200:
        problems = "; ".join(ready.json().get("problems", [])) or ready.text[:200]
        return Check("health", False, f"/readyz: {problems}", "fix what it names, see below")
    return Check("health", True, f"{url}/health and /readyz answer ok")


def _engine(settings: Settings) -> Check:
    from offgrid.engine.build import find_engine

    try:
        engine = find_engine(settings)
    except OffGridError as exc:
        return Check("engine", False, exc.message, "offgrid setup (builds it once)")
    version = engine.version()
    if version.startswith("unknown"):  # it did not run, or did not say its version
        return Check("engine", False, f"{engine.path} does not run: {version}", "offgrid setup")
    return Check("engine", True, f"{engine.path} ({engine.backend}): {version}")


def _models(settings: Settings) -> Check:
    folder = settings.models_dir
    if not folder.is_dir():
        return Check("models", False, f"{folder} does not exist", f"mkdir -p {folder}")
    unreadable = [p.name for p in folder.glob("*.gguf") if not _readable_by_service(p)]
    if unreadable or not _readable_by_service(folder):
        who = SERVICE_USER if _service_user() else "this user"
        return Check(
            "models",
            False,
            f"{who} cannot read {folder}"
            + (f": {', '.join(unreadable[:5])}" if unreadable else ""),
            f"sudo chown -R {SERVICE_USER}:{SERVICE_USER} {folder}",
        )
    count = len(list(folder.glob("*.gguf")))
    note = "" if count else " (no model yet: offgrid import, offgrid download)"
    return Check("models", True, f"{folder}: {count} GGUF files{note}")


def _disk(settings: Settings) -> Check:
    folder = settings.models_dir if settings.models_dir.exists() else Path("/")
    free = shutil.disk_usage(folder).free
    gib = free / 1024**3
    if free < MIN_FREE:
        return Check(
            "disk", False, f"{gib:.1f} GiB free in {folder}", "free space, or move the models"
        )
    return Check("disk", True, f"{gib:.1f} GiB free in {folder}")


def _gpu(settings: Settings) -> Check:
    from offgrid.engine.build import find_engine
    from offgrid.resources import gpus

    seen = gpus()
    if not seen:
        if shutil.which("nvidia-smi") and _out(["nvidia-smi", "-L"]).startswith("GPU"):
            return Check(
                "gpu", False, "nvidia-smi lists a GPU that OffGrid cannot read", "check NVML"
            )
        return Check("gpu", True, "no GPU: models run on the CPU")
    names = ", ".join(g.name for g in seen)
    try:
        backend = find_engine(settings).backend
    except OffGridError:
        backend = ""
    if backend == "cpu":
        return Check("gpu", False, f"{names}, but the engine is CPU-only", "offgrid setup --cuda")
    return Check("gpu", True, names)


def _peers(settings: Settings) -> Check:
    """P2P off: nothing listens beyond loopback. On: the node, its peers, who was heard."""
    import httpx2

    if not settings.p2p:
        return Check("peers", True, "P2P is off: nothing listens beyond loopback")
    url = f"http://{settings.reach_host}:{settings.port}/api/peers"
    auth = {"Authorization": f"Bearer {settings.api_key}"} if settings.api_key else {}
    try:
        state = httpx2.get(url, timeout=10, headers=auth).json()
    except (httpx2.HTTPError, ValueError) as exc:
        return Check("peers", False, f"{url}: {exc}", "see the port check above")
    if not state.get("enabled"):
        detail = state.get("error", {}).get("message") or "the running server has P2P off"
        return Check("peers", False, detail, f"restart it to take the setting: {UNIT}")
    node, peers = state["node"], state["peers"]
    heard = sum(1 for p in peers if p["seen"])
    names = ", ".join(f"{p['name']} ({p['address']})" for p in peers) or "no peer paired"
    detail = (
        f"node {node['name']} on port {node['port']}, {len(peers)} paired ({heard} heard "
        f"lately): {names}; {len(state['discovered'])} unpaired nodes nearby"
    )
    return Check("peers", True, detail)


CHECKS: tuple[Callable[[Settings], Check], ...] = (
    _config,
    _service,
    _port,
    _health,
    _engine,
    _models,
    _disk,
    _gpu,
    _peers,
)


def run_checks(settings: Settings) -> list[Check]:
    """Every check, in order; the health check only once the port answers."""
    results: list[Check] = []
    for check in CHECKS:
        if check is _health and not results[-1].ok:
            continue
        results.append(check(settings))
    return results


def _out(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip()


def _service_user() -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam(SERVICE_USER)
    except KeyError:
        return None


def _readable_by_service(path: Path) -> bool:
    """Whether the service's user (or, with none, this user) can read ``path``: judged from
    its owner and mode, since root's own access says nothing about another user's."""
    user = _service_user()
    if user is None or os.geteuid() == user.pw_uid:
        return os.access(path, os.R_OK)
    st = path.stat()
    need = 0o5 if path.is_dir() else 0o4  # read, and search for a folder
    if st.st_uid == user.pw_uid:
        return (st.st_mode >> 6) & need == need
    groups = {user.pw_gid} | {g.gr_gid for g in _groups_of(user.pw_name)}
    if st.st_gid in groups:
        return (st.st_mode >> 3) & need == need
    return st.st_mode & need == need


def _groups_of(name: str) -> list[grp.struct_group]:
    return [g for g in grp.getgrall() if name in g.gr_mem]
