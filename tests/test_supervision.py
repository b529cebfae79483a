"""Engine supervision: an engine's states through start, stop and crash (on the fake
engine), crashes survived by the server, and stopping the server leaves no child."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from conftest import (
    FAKE_ENGINE,
    STARTER_ID,
    Server,
    link_models,
    llama_server_pids,
    start_server,
    stream_data,
    wait_for,
)
from offgrid.engine.build import EngineBinary
from offgrid.engine.process import Engine, EngineOptions, EngineState
from offgrid.errors import EngineUnavailableError
from offgrid.models.registry import ModelInfo

HELLO = [{"role": "user", "content": "Hi"}]


async def start_fake(tmp_path: Path, timeout: float = 10.0) -> Engine:
    """``Engine.start`` on ``fake_engine.py`` (its mode from FAKE_ENGINE_MODE)."""
    model = ModelInfo("fake", tmp_path / "fake.gguf", 1, 0.0, None)
    binary = EngineBinary(Path(FAKE_ENGINE), "cpu", "OFFGRID_LLAMA_SERVER")
    options = EngineOptions(threads=1)
    return await Engine.start(binary, model, options, log_dir=tmp_path, timeout=timeout)


def test_engine_states_through_stop_and_crash(tmp_path: Path) -> None:
    async def main() -> None:
        engine = await start_fake(tmp_path)
        assert engine.state is EngineState.READY and engine.alive
        await engine.stop()
        await engine.stop()  # idempotent
        assert json.dumps({"state": engine.state}) == '{"state": "stopped"}'
        assert not engine.alive
        with pytest.raises(RuntimeError, match="no transition stopped → ready"):
            engine._move(EngineState.READY)

        crashed = await start_fake(tmp_path)
        exits: list[Engine] = []
        crashed.on_exit = exits.append
        os.kill(crashed.pid or 0, signal.SIGKILL)
        assert await crashed.wait_exited(10)
        assert crashed.state is EngineState.EXITED and crashed.exit_reason == "signal 9"
        assert exits == [crashed]
        await crashed.stop()
        assert crashed.state is EngineState.STOPPED

    asyncio.run(main())


def test_engine_that_ignores_sigterm_is_killed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_ENGINE_MODE", "ignore-sigterm")

    async def main() -> None:
        engine = await start_fake(tmp_path)
        await engine.stop(grace=0.2)
        assert engine.state is EngineState.STOPPED and not engine.alive
        assert engine.proc is not None and engine.proc.returncode == -signal.SIGKILL

    asyncio.run(main())


@pytest.mark.parametrize(
    ("mode", "timeout", "error"),
    [
        ("crash-on-load", 30.0, "exited while loading"),
        ("hang-on-load", 0.5, "did not become ready"),
    ],
)
def test_engine_that_fails_to_load_fails_its_start(
    mode: str, timeout: float, error: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_ENGINE_MODE", mode)
    with pytest.raises(EngineUnavailableError, match=error):
        asyncio.run(start_fake(tmp_path, timeout=timeout))
    assert processes_using(tmp_path) == set()


def processes_using(folder: Path) -> set[int]:
    """Processes with a file in ``folder`` on their command line: a test's own engines,
    not those of another run on the same machine."""
    return {
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if any(arg.startswith(f"{folder}/") for arg in p.info["cmdline"] or [])
    }


def test_engine_killed_then_next_request_succeeds(server: Server) -> None:
    client = server.client()
    client.chat.completions.create(model=STARTER_ID, messages=HELLO, max_tokens=2)
    before = engine_events(server)
    pid = server.engine_pid(STARTER_ID)
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: engine_events(server)["crashes"] > before["crashes"], 30, "the crash")
    resp = client.chat.completions.create(model=STARTER_ID, messages=HELLO, max_tokens=2)
    assert resp.choices[0].message.content is not None
    assert server.engine_pid(STARTER_ID) != pid
    assert "died with signal 9" in server.log.read_text()
    after = engine_events(server)
    assert {k: after[k] - before[k] for k in after} == {"starts": 1, "crashes": 1, "restarts": 1}


def engine_events(server: Server) -> dict[str, float]:
    """The starter's engine starts, crashes and restarts, from /metrics."""
    text = requests.get(f"{server.url}/metrics", timeout=10).text
    found = {"starts": 0.0, "crashes": 0.0, "restarts": 0.0}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            event = s.name.removeprefix("offgrid_engine_").removesuffix("_total")
            if event in found and s.labels.get("model") == STARTER_ID:
                found[event] = s.value
    return found


def test_engine_killed_mid_stream_ends_stream_with_error_event(server: Server) -> None:
    server.client().chat.completions.create(model=STARTER_ID, messages=HELLO, max_tokens=1)
    pid = server.engine_pid(STARTER_ID)
    events: list[bytes] = []
    for line in stream_data(server.url, STARTER_ID, max_tokens=2000, ignore_eos=True):
        events.append(line)
        if len(events) == 3:
            os.kill(pid, signal.SIGKILL)
    assert b'"error"' in events[-1], events[-3:]
    resp2 = server.client().chat.completions.create(model=STARTER_ID, messages=HELLO, max_tokens=2)
    assert resp2.choices[0].message.content is not None


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stopping_serve_leaves_no_engine(
    sig: int, tmp_path: Path, engine_binary: EngineBinary, model_store: Path
) -> None:
    models = link_models(
        model_store, tmp_path / "models", {f"{STARTER_ID}.gguf": f"{STARTER_ID}.gguf"}
    )
    srv = start_server(tmp_path, models, engine_binary)
    srv.client().chat.completions.create(model=STARTER_ID, messages=HELLO, max_tokens=2)
    child = srv.engine_pid(STARTER_ID)
    assert child in llama_server_pids() & processes_using(models)
    # uvicorn shuts down gracefully, then re-raises the signal so the exit status tells it
    assert srv.stop(sig) in (0, -sig, 128 + sig)
    assert "engine for" in srv.log.read_text() and "stopped" in srv.log.read_text()
    assert processes_using(models) == set()


def test_engine_dies_with_a_killed_server(
    tmp_path: Path, engine_binary: EngineBinary, model_store: Path
) -> None:
    """Even SIGKILL of the server (no cleanup possible) takes its engines down."""
    models = link_models(
        model_store, tmp_path / "models", {f"{STARTER_ID}.gguf": f"{STARTER_ID}.gguf"}
    )
    srv = start_server(tmp_path, models, engine_binary)
    srv.client().chat.completions.create(model=STARTER_ID, messages=HELLO, max_tokens=2)
    child = srv.engine_pid(STARTER_ID)
    srv.stop(signal.SIGKILL)
    wait_for(lambda: child not in llama_server_pids(), 10, "the orphaned engine to die")


def test_engine_killed_with_dead_pooled_sockets_next_request_succeeds(
    tmp_path: Path, engine_binary: EngineBinary, model_store: Path
) -> None:
    """Regression (seen in CI): after concurrent requests the relay's pool held several
    sockets to the engine; when it died, each retry took another dead one and failed."""
    models = link_models(
        model_store, tmp_path / "models", {f"{STARTER_ID}.gguf": f"{STARTER_ID}.gguf"}
    )
    srv = start_server(tmp_path, models, engine_binary)
    try:
        client = srv.client()
        with ThreadPoolExecutor(4) as pool:
            list(
                pool.map(
                    lambda _: client.chat.completions.create(
                        model=STARTER_ID, messages=HELLO, max_tokens=2
                    ),
                    range(4),
                )
            )
        os.kill(srv.engine_pid(STARTER_ID), signal.SIGKILL)
        resp = client.chat.completions.create(model=STARTER_ID, messages=HELLO, max_tokens=2)
        assert resp.choices[0].message.content is not None
    finally:
        srv.stop()


@pytest.mark.parametrize("when", ["mid-load", "mid-stream"])
def test_a_server_killed_mid_load_or_mid_stream_restarts_clean(
    when: str, tmp_path: Path, engine_binary: EngineBinary, model_store: Path
) -> None:
    """Issue 18: SIGKILL of the server itself (no cleanup at all) while an engine loads or
    streams: its engine dies with it, the next start on the same data is clean (registry
    intact by SQLite's own check) and serves."""
    models = link_models(
        model_store, tmp_path / "models", {f"{STARTER_ID}.gguf": f"{STARTER_ID}.gguf"}
    )
    srv = start_server(tmp_path, models, engine_binary)
    if when == "mid-load":
        body = {"model": STARTER_ID, "messages": HELLO, "max_tokens": 2}
        with ThreadPoolExecutor(1) as pool:  # a request that makes the engine load
            pool.submit(requests.post, f"{srv.url}/v1/chat/completions", json=body, timeout=60)
            server = psutil.Process(srv.proc.pid)  # killed the moment its engine is spawned
            children = set(wait_for(lambda: {c.pid for c in server.children()}, 30, "a load"))
            srv.stop(signal.SIGKILL)
    else:
        children = set()
        for n, _line in enumerate(stream_data(srv.url, STARTER_ID, max_tokens=500)):
            if n == 3:
                children = {srv.engine_pid(STARTER_ID)}
                srv.stop(signal.SIGKILL)
                break
    assert children, "an engine was running"
    wait_for(lambda: not any(psutil.pid_exists(p) for p in children), 15, "the engine to die")
    index = tmp_path / "home" / ".local" / "share" / "offgrid" / "registry.sqlite"
    with sqlite3.connect(index) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    again = start_server(tmp_path, models, engine_binary)
    try:
        reply = again.client().chat.completions.create(
            model=STARTER_ID, messages=HELLO, max_tokens=2
        )
        assert reply.choices[0].message.content is not None
    finally:
        again.stop()
