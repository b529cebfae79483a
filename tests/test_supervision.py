"""Engine supervision: crashes are survived, and stopping the server leaves no child."""

from __future__ import annotations

import os
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from conftest import (
    STARTER_ID,
    Server,
    link_models,
    llama_server_pids,
    start_server,
    stream_data,
    wait_for,
)
from offgrid.engine.build import EngineBinary

HELLO = [{"role": "user", "content": "Hi"}]


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
    before = llama_server_pids()
    srv = start_server(tmp_path, models, engine_binary)
    srv.client().chat.completions.create(model=STARTER_ID, messages=HELLO, max_tokens=2)
    child = srv.engine_pid(STARTER_ID)
    assert child in llama_server_pids()
    # uvicorn shuts down gracefully, then re-raises the signal so the exit status tells it
    assert srv.stop(sig) in (0, -sig, 128 + sig)
    assert "engine for" in srv.log.read_text() and "stopped" in srv.log.read_text()
    assert llama_server_pids() - before == set()


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
