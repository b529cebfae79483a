"""SIGKILL at many points (issue 18): `offgrid import`, `export`, `pack`, a Hub download and
a pull from a peer are killed at kill points chosen by a seed — before or after the n-th
write, fsync, rename, link or unlink they make (tests/offline_guard/kill_points.py) — and
then: no model is listed that is not whole and verified (no pack passes its installer's
checks that is not whole), and the same command run again completes and verifies.

A first run of each counts the calls it makes (its kill points); each seed then picks one.
``OFFGRID_TEST_CRASH_SEEDS`` (default 3) sets how many seeds each command gets.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from conftest import (
    OFFLINE_GUARD,
    REAL_ENV,
    STARTER_ID,
    Server,
    link_models,
    wait_for,
)
from fake_hub import FakeHub
from lan import FLEET_TOKEN, start_loopback_node
from offgrid.config import load_settings
from offgrid.engine.build import EngineBinary
from offgrid.engine.process import free_port
from offgrid.models.registry import Registry
from offgrid.models.starter import STARTER

SEEDS = int(os.environ.get("OFFGRID_TEST_CRASH_SEEDS", "3"))
OFFGRID = [sys.executable, "-m", "offgrid"]
SMOL = STARTER.file_name


def kill_point(counts: dict[str, int], seed: int) -> str:
    """One kill point among those a run has: ``op:n:before|after``."""
    rng = random.Random(seed)
    op = rng.choice(sorted(op for op, n in counts.items() if n))
    return f"{op}:{rng.randint(1, counts[op])}:{rng.choice(('before', 'after'))}"


def node_env(tmp: Path, **extra: str) -> dict[str, str]:
    return {
        **REAL_ENV,
        "HOME": str(tmp / "home"),
        "OFFGRID_MODELS_DIR": str(tmp / "models"),
        "OFFGRID_DATA_DIR": str(tmp / "data"),
        "PYTHONPATH": os.pathsep.join(filter(None, [OFFLINE_GUARD, REAL_ENV.get("PYTHONPATH")])),
        **extra,
    }


def run(argv: list[str], env: dict[str, str], at: str = "") -> subprocess.CompletedProcess[str]:
    env = {**env, "OFFGRID_TEST_KILL_AT": at} if at else env
    return subprocess.run([*OFFGRID, *argv], env=env, capture_output=True, text=True, timeout=300)


def counted(argv: list[str], env: dict[str, str], tmp: Path) -> dict[str, int]:
    """The kill points of a run of ``argv``: how many of each call it made."""
    out = tmp / "counts.json"
    done = run(argv, {**env, "OFFGRID_TEST_KILL_COUNT": str(out)})
    assert done.returncode == 0, done.stderr
    counts: dict[str, int] = json.loads(out.read_text())
    return counts


def whole_models(env: dict[str, str]) -> dict[str, str]:
    """The models the registry lists, each with its status after hashing it again."""
    registry = Registry.for_settings(load_settings(env))
    try:
        return {r.model_id: r.status for r in registry.verify([], accept=False)}
    finally:
        registry.close()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def crash_then_rerun(
    tmp: Path,
    argv: list[str],
    env: dict[str, str],
    check: Callable[[str], None],
    reset: Callable[[], None] = lambda: None,
    finished: Callable[[str], None] | None = None,
) -> None:
    """Count ``argv``'s kill points, then for each seed: reset, kill the run at one, check
    what is left (``check(point)``), run it again whole and check again (``finished``,
    when given, instead)."""
    counts = counted(argv, env, tmp)
    for seed in range(SEEDS):
        reset()
        point = kill_point(counts, seed)
        killed = run(argv, env, point)
        assert killed.returncode in (-signal.SIGKILL, 0), (point, killed.stderr)
        check(point)
        again = run(argv, env)
        assert again.returncode == 0, (point, again.stderr)
        (finished or check)(point)


@pytest.fixture
def models_env(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "home").mkdir(exist_ok=True)
    return node_env(tmp_path)


def test_import_killed_anywhere(
    tmp_path: Path, model_store: Path, models_env: dict[str, str]
) -> None:
    folder = Path(models_env["OFFGRID_MODELS_DIR"])

    def check(point: str) -> None:
        listed = whole_models(models_env)
        assert set(listed) <= {STARTER_ID} and set(listed.values()) <= {"OK"}, (point, listed)

    def reset() -> None:
        for path in folder.glob("*.gguf"):
            run(["remove", path.stem, "--force"], models_env)

    crash_then_rerun(tmp_path, ["import", str(model_store / SMOL)], models_env, check, reset)
    assert sha256(folder / SMOL) == STARTER.sha256
    assert [p.name for p in folder.iterdir()] == [SMOL], "no partial left"


def test_export_killed_anywhere(
    tmp_path: Path, model_store: Path, models_env: dict[str, str]
) -> None:
    link_models(model_store, Path(models_env["OFFGRID_MODELS_DIR"]), {SMOL: SMOL})
    dest = tmp_path / "stick"
    other = tmp_path / "other"
    (other / "home").mkdir(parents=True, exist_ok=True)
    reader = node_env(other)

    def check(point: str) -> None:
        """Whatever the stick holds, importing it never lists a model that is not whole."""
        if not dest.exists():
            return
        run(["import", str(dest)], reader)
        listed = whole_models(reader)
        assert set(listed) <= {STARTER_ID} and set(listed.values()) <= {"OK"}, (point, listed)

    def reset() -> None:
        subprocess.run(["rm", "-rf", str(dest), str(other / "models"), str(other / "data")])

    crash_then_rerun(tmp_path, ["export", STARTER_ID, str(dest)], models_env, check, reset)
    assert whole_models(reader) == {STARTER_ID: "OK"}


def test_pack_killed_anywhere(tmp_path: Path, models_env: dict[str, str]) -> None:
    """A pack cut short is refused by its own installer's checks (or, sealed, is the whole
    pack); `offgrid pack` into the same folder again completes, and the pack verifies.
    Without models: their part is `export`'s bundle, killed above."""
    env = {**models_env, "OFFGRID_CACHE_DIR": str(load_settings(REAL_ENV).cache_dir)}
    dest = tmp_path / "stick" / "offgrid-pack"
    python = f"{sys.version_info[0]}.{sys.version_info[1]}"
    whole: set[str] = set()

    def verified() -> bool:
        install = dest / "install.sh"
        checks = ["bash", str(install), "--verify-only"]
        return install.exists() and subprocess.run(checks, capture_output=True).returncode == 0

    def listed() -> set[str]:
        return {line[66:] for line in (dest / "SHA256SUMS").read_text().splitlines()}

    def check(point: str) -> None:
        if verified():  # only a whole pack may pass: every file the finished one has
            assert listed() == whole, (point, sorted(whole ^ listed())[:5])

    def reset() -> None:  # the first time, after the counting run: the whole pack's files
        if not whole:
            assert verified()
            whole.update(listed())

    def finished(point: str) -> None:
        assert verified() and listed() == whole, point

    argv = ["pack", str(dest), "--python", python]
    crash_then_rerun(tmp_path, argv, env, check, reset, finished)


def test_hub_download_killed_anywhere(
    tmp_path: Path, model_store: Path, models_env: dict[str, str]
) -> None:
    folder = Path(models_env["OFFGRID_MODELS_DIR"])
    with FakeHub() as hub:
        hub.add("tester/SmolLM2-135M-Instruct-GGUF", {SMOL: model_store / SMOL})
        env = {**models_env, "HF_ENDPOINT": hub.url}

        def check(point: str) -> None:
            listed = whole_models(env)
            assert set(listed) <= {STARTER_ID} and set(listed.values()) <= {"OK"}, (point, listed)

        def reset() -> None:
            run(["remove", STARTER_ID, "--force"], env)

        argv = ["download-hf", "tester/SmolLM2-135M-Instruct-GGUF"]
        crash_then_rerun(tmp_path, argv, env, check, reset)
    assert sha256(folder / SMOL) == STARTER.sha256


def test_peer_pull_killed_anywhere(
    tmp_path: Path, model_store: Path, engine_binary: EngineBinary
) -> None:
    """B's server is the one killed, at a kill point of its pull from A; started again, it
    lists nothing partial, and the same pull completes and verifies."""
    token = FLEET_TOKEN
    ports = {"a": free_port(), "b": free_port()}
    for name in ("a", "b"):
        (tmp_path / name / "home").mkdir(parents=True, exist_ok=True)
    link_models(model_store, tmp_path / "a" / "models", {SMOL: SMOL})
    (tmp_path / "b" / "models").mkdir()

    def start(name: str, **extra: str) -> Server:
        return start_loopback_node(tmp_path, name, ports[name], engine_binary, **extra)

    def pull(srv: Server) -> str:
        body = {"peer": "node-a", "model": STARTER_ID}
        try:
            with requests.post(f"{srv.url}/api/pulls", json=body, stream=True, timeout=300) as r:
                lines = [x for x in r.iter_lines() if x.startswith(b"data: ")]
        except requests.RequestException:
            return "cut"  # the server died while answering
        return str(json.loads(lines[-1][6:])["status"]) if lines else "cut"

    def counts_of(job: Callable[[Server], object]) -> dict[str, int]:
        out = tmp_path / "counts.json"
        srv = start("b", OFFGRID_TEST_KILL_COUNT=str(out))
        job(srv)
        srv.stop()
        counts: dict[str, int] = json.loads(out.read_text())
        return counts

    a = start("a")
    b_models = tmp_path / "b" / "models"
    try:
        b = start("b")
        b_env = dict(b.env)  # its folders, for the CLI and the registry while it is down
        pair = {"address": f"127.0.0.1:{ports['a']}", "token": token}
        assert requests.post(f"{b.url}/api/peers", json=pair, timeout=30).status_code == 201
        b.stop()
        started = counts_of(lambda srv: None)  # what a start and a stop alone do
        whole = counts_of(pull)
        counts = {op: whole[op] - started[op] for op in whole}
        killed = 0
        for seed in range(SEEDS):
            run(["remove", STARTER_ID, "--force"], b_env)
            op, n, when = kill_point(counts, seed).split(":")
            point = f"{op}:{int(n) + started[op]}:{when}"
            b = start("b", OFFGRID_TEST_KILL_AT=point)
            if pull(b) == "cut":  # else the pull made fewer such calls this time: no kill
                wait_for(lambda p=b.proc: p.poll() is not None, 60, f"B to die at {point}")
                killed += 1
            b.stop()
            listed = whole_models(b_env)
            assert set(listed) <= {STARTER_ID} and set(listed.values()) <= {"OK"}, (point, listed)
            b = start("b")
            assert pull(b) in ("done", "present"), point
            b.stop()
            assert whole_models(b_env) == {STARTER_ID: "OK"}, point
        assert sha256(b_models / SMOL) == STARTER.sha256
        assert killed >= SEEDS // 2, f"B died at {killed} of {SEEDS} kill points"
    finally:
        a.stop()
