"""Both relay paths, against the fake engine: the socket splice (uvicorn httptools) and the
plain ASGI fallback (any other server, here uvicorn's h11), including engine failures."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from conftest import (
    STARTER_ID,
    fake_engine_settings,
    link_models,
    serve_in_thread,
    stream_data,
    wait_for,
)
from offgrid.api.relay import passthrough
from offgrid.api.relay import request as request_module


@pytest.fixture(params=["httptools", "h11"])
def relay_url(request: pytest.FixtureRequest, tmp_path: Path, model_store: Path) -> Iterator[str]:
    models = link_models(model_store, tmp_path / "m", {f"{STARTER_ID}.gguf": f"{STARTER_ID}.gguf"})
    with serve_in_thread(fake_engine_settings(tmp_path, models), request.param) as url:
        yield url


def sse_events(url: str, **body: object) -> list[dict[str, object]]:
    lines = stream_data(url, STARTER_ID, messages=[], **body)
    return [json.loads(line[6:]) for line in lines if line != b"data: [DONE]"]


def test_stream_arrives_whole_on_both_paths(relay_url: str) -> None:
    events = sse_events(relay_url, max_tokens=50)
    assert len(events) == 51  # 50 tokens and the finish chunk
    assert events[0]["choices"][0]["delta"]["content"] == "tok0 "  # type: ignore[index]


def test_engine_death_mid_stream_ends_with_error_event(relay_url: str) -> None:
    pid = requests.get(f"{relay_url}/api/ps", timeout=5).json()["models"]
    if not pid:
        sse_events(relay_url, max_tokens=1)
        pid = requests.get(f"{relay_url}/api/ps", timeout=5).json()["models"]
    engine = pid[0]["pid"]
    seen: list[bytes] = []
    for line in stream_data(relay_url, STARTER_ID, messages=[], max_tokens=100000):
        seen.append(line)
        if len(seen) == 3:
            os.kill(engine, signal.SIGKILL)
    assert b'"error"' in seen[-1]
    assert len(sse_events(relay_url, max_tokens=3)) == 4  # and the next request works


def test_engine_death_mid_stream_ends_anthropic_stream_with_its_error_event(
    relay_url: str,
) -> None:
    """On Anthropic's route the last event is Anthropic's named ``error`` event."""
    sse_events(relay_url, max_tokens=1)  # loaded
    engine = requests.get(f"{relay_url}/api/ps", timeout=5).json()["models"][0]["pid"]
    body = {"model": STARTER_ID, "messages": [], "max_tokens": 100000, "stream": True}
    lines: list[bytes] = []
    with requests.post(f"{relay_url}/v1/messages", json=body, stream=True, timeout=60) as resp:
        for line in resp.iter_lines():
            lines.append(line)
            if len(lines) == 6:
                os.kill(engine, signal.SIGKILL)
    events = [ln for ln in lines if ln]
    assert events[-2] == b"event: error"
    error = json.loads(events[-1].removeprefix(b"data: "))
    assert error["type"] == "error" and error["error"]["type"] == "api_error"
    assert "engine" in error["error"]["message"]


def test_an_anthropic_stream_always_begins_with_message_start(relay_url: str) -> None:
    """llama-server skips ``message_start`` when its first token is half a UTF-8 character
    (about 1 stream in 50); the relay makes one up then. The fake engine never sends one."""
    body = {"model": STARTER_ID, "messages": [], "max_tokens": 3, "stream": True}
    got = requests.post(f"{relay_url}/v1/messages", json=body, timeout=60)
    events = [line for line in got.text.split("\n") if line.startswith("event: ")]
    assert events[0] == "event: message_start" and events.count("event: message_start") == 1
    start = json.loads(got.text.split("\n")[1].removeprefix("data: "))
    assert start["message"]["role"] == "assistant" and start["message"]["model"] == STARTER_ID


def _ps(url: str) -> dict[str, object]:
    models = requests.get(f"{url}/api/ps", timeout=5).json()["models"]
    return models[0] if models else {}


def test_a_client_that_stops_reading_a_stream_is_dropped_and_frees_its_slot(
    relay_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 18: a client that never reads would hold its engine slot for ever."""
    monkeypatch.setattr(passthrough, "STALLED_S", 1.0)
    monkeypatch.setenv("FAKE_ENGINE_TOKEN_MS", "0")  # the buffers between fill at once
    sse_events(relay_url, max_tokens=1)  # loaded
    host, port = relay_url.removeprefix("http://").split(":")
    body = json.dumps(
        {"model": STARTER_ID, "messages": [], "max_tokens": 10_000_000, "stream": True}
    ).encode()
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect((host, int(port)))
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )  # and never read what comes back
        wait_for(lambda: _ps(relay_url).get("active_requests") == 1, 10, "the stream to start")
        wait_for(lambda: _ps(relay_url).get("active_requests") == 0, 20, "the slot to be freed")
        sock.settimeout(10)  # and the connection is dropped: the reads end, none blocks
        with contextlib.suppress(ConnectionResetError):
            while sock.recv(1 << 16):
                pass
    assert len(sse_events(relay_url, max_tokens=3)) == 4  # and the next request works


def test_a_body_sent_a_byte_at_a_time_times_out_with_a_408(
    relay_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(request_module, "BODY_GRACE_S", 1.0)
    host, port = relay_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=20) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n")
        started = time.monotonic()
        answer = b""
        for _ in range(40):  # a byte every 0.1 s: 50 would take 5 s
            try:
                sock.sendall(b"{")
            except OSError:
                break  # closed by the server after its answer
            sock.settimeout(0.1)
            try:
                answer += sock.recv(4096)
            except TimeoutError:
                continue
            if answer:
                break
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert time.monotonic() - started < 3
        sock.settimeout(5)  # the server ends the connection: the rest is never read
        with contextlib.suppress(ConnectionResetError):
            while sock.recv(4096):
                pass
    assert _ps(relay_url).get("active_requests", 0) == 0
