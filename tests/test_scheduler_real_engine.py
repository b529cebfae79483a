"""The scheduler with the real engine: one load per model, eviction, keep-alive, queues."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
import requests

from conftest import (
    GEMMA_ID,
    SLOWDOWN,
    STARTER_ID,
    Server,
    link_models,
    start_server,
    stream_data,
    wait_for,
)
from offgrid.engine.build import EngineBinary
from offgrid.engine.process import default_threads

SMOL = f"{STARTER_ID}.gguf"
HELLO = [{"role": "user", "content": "Hi"}]


@pytest.fixture
def models(tmp_path: Path, model_store: Path) -> Path:
    """The starter under two more names, and Gemma: three models, two of them tiny."""
    return link_models(
        model_store,
        tmp_path / "models",
        {"a.gguf": SMOL, "b.gguf": SMOL, "c.gguf": SMOL, f"{GEMMA_ID}.gguf": f"{GEMMA_ID}.gguf"},
    )


@pytest.fixture
def serve(
    tmp_path: Path, models: Path, engine_binary: EngineBinary
) -> Iterator[Callable[..., Server]]:
    """Start `offgrid serve` on the three models with extra env; stopped after the test."""
    started: list[Server] = []

    def start(**env: str) -> Server:
        started.append(start_server(tmp_path, models, engine_binary, **env))
        return started[-1]

    yield start
    for srv in started:
        srv.stop()


def chat(srv: Server, model: str, **extra: object) -> requests.Response:
    body = {"model": model, "messages": HELLO, "max_tokens": 2, **extra}
    return requests.post(f"{srv.url}/v1/chat/completions", json=body, timeout=120)


def loaded(srv: Server) -> set[str]:
    return {str(m["id"]) for m in srv.ps() if m.get("state") == "ready"}


def engines_for(path: Path) -> int:
    count = 0
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if cmd and cmd[0].endswith("llama-server") and str(path) in cmd:
            count += 1
    return count


def test_concurrent_requests_to_a_cold_model_start_one_engine(
    serve: Callable[..., Server], models: Path
) -> None:
    srv = serve()
    with ThreadPoolExecutor(6) as pool:
        codes = list(pool.map(lambda _: chat(srv, "a").status_code, range(6)))
    assert codes == [200] * 6
    assert engines_for(models / "a.gguf") == 1


def test_third_model_evicts_least_recently_used_idle_one(
    serve: Callable[..., Server], models: Path
) -> None:
    srv = serve(OFFGRID_MAX_LOADED_MODELS="2")
    assert chat(srv, "a").status_code == 200
    assert chat(srv, "b").status_code == 200
    assert chat(srv, "a").status_code == 200  # a is now the most recently used
    assert chat(srv, "c").status_code == 200
    assert loaded(srv) == {"a", "c"}
    assert engines_for(models / "b.gguf") == 0


def test_a_model_serving_a_request_is_not_evicted(
    serve: Callable[..., Server], models: Path
) -> None:
    srv = serve(OFFGRID_MAX_LOADED_MODELS="1")
    assert chat(srv, "a").status_code == 200
    events: list[str] = []
    first_chunk = threading.Event()

    def long_stream() -> None:
        for _ in stream_data(srv.url, "a", max_tokens=200, ignore_eos=True):
            first_chunk.set()
        events.append("a done")

    t = threading.Thread(target=long_stream)
    t.start()
    assert first_chunk.wait(60)
    assert chat(srv, "b").status_code == 200  # waits for a's stream, then swaps
    events.append("b done")
    t.join(60)
    assert events == ["a done", "b done"]
    assert loaded(srv) == {"b"}


def test_keep_alive_zero_and_minus_one(serve: Callable[..., Server], models: Path) -> None:
    srv = serve(OFFGRID_KEEP_ALIVE="1s")
    assert chat(srv, "a", keep_alive=-1).status_code == 200  # never unloads
    assert chat(srv, "b").status_code == 200  # server default: 1 s
    assert chat(srv, "c", keep_alive=0).status_code == 200  # unloads at once
    wait_for(lambda: "c" not in loaded(srv), 10, "c to unload at once")
    wait_for(lambda: "b" not in loaded(srv), 10, "b to unload after 1 s")
    assert "a" in loaded(srv)
    rows = {m["id"]: m for m in srv.ps()}
    assert rows["a"]["keep_alive"] == -1 and rows["a"]["expires_in"] is None


def test_full_queue_gives_429_with_retry_after(serve: Callable[..., Server], models: Path) -> None:
    srv = serve(OFFGRID_PARALLEL="1", OFFGRID_MAX_QUEUE="1")
    assert chat(srv, "a").status_code == 200
    started = threading.Event()

    def stream() -> None:
        for _ in stream_data(srv.url, "a", max_tokens=300, ignore_eos=True):
            started.set()

    runner = threading.Thread(target=stream)
    runner.start()
    assert started.wait(60)
    queued = threading.Thread(target=lambda: chat(srv, "a"))
    queued.start()
    wait_for(lambda: srv.ps()[0].get("queued_requests") == 1, 10, "one queued request")
    resp = chat(srv, "a")
    assert resp.status_code == 429
    assert int(resp.headers["Retry-After"]) > 0
    assert resp.json()["error"]["code"] == "overloaded"
    runner.join(120)
    queued.join(120)


def test_admin_load_and_unload(serve: Callable[..., Server], models: Path) -> None:
    srv = serve()
    r = requests.post(f"{srv.url}/api/models/a/load", json={"keep_alive": "-1"}, timeout=120)
    assert r.status_code == 200 and r.json()["pid"]
    assert loaded(srv) == {"a"}
    [row] = srv.ps()
    assert row["memory_bytes"] == row["ram_bytes"] + row["vram_bytes"]  # type: ignore[operator]
    cmd = psutil.Process(int(str(row["pid"]))).cmdline()
    if "--n-gpu-layers" in cmd:  # OffGrid placed it on a GPU: the engine got that many
        assert cmd[cmd.index("--n-gpu-layers") + 1] == str(row["gpu_layers"])
    else:  # a CPU engine: everything counted in RAM
        assert (row["gpu_layers"], row["vram_bytes"]) == (0, 0)
    assert requests.post(f"{srv.url}/api/models/a/unload", timeout=60).json()["unloaded"]
    assert loaded(srv) == set()
    assert requests.post(f"{srv.url}/api/models/zzz/load", timeout=60).status_code == 404


def test_aliases_and_per_model_settings(serve: Callable[..., Server], models: Path) -> None:
    srv = serve(
        OFFGRID_MODEL_ALIASES="gpt-4o-mini=a",
        OFFGRID_MODEL_SETTINGS='{"a": {"context_size": 512, "parallel": 2,'
        ' "extra_args": ["--temp", "0.5"]}}',
    )
    client = srv.client()
    assert "gpt-4o-mini" in {m.id for m in client.models.list().data}
    resp = client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, max_tokens=2)  # type: ignore[arg-type]
    assert resp.choices[0].message.content is not None
    [row] = srv.ps()
    assert row["id"] == "a" and row["parallel"] == 2
    cmd = psutil.Process(int(str(row["pid"]))).cmdline()
    assert cmd[cmd.index("--ctx-size") + 1] == "1024"  # 512 per request, 2 slots
    assert cmd[cmd.index("--parallel") + 1] == "2"
    assert cmd[-2:] == ["--temp", "0.5"]


def test_engines_with_a_thread_per_core_take_turns(
    serve: Callable[..., Server], models: Path
) -> None:
    """While a generates on every core, b's request waits for the CPU, then is answered."""
    srv = serve(OFFGRID_NUM_THREADS=str(default_threads()))
    assert chat(srv, "b").status_code == 200  # loaded: its wait is for the CPU, not a load
    stream = stream_data(srv.url, "a", max_tokens=2000, ignore_eos=True)
    next(stream)  # a generates
    answers: list[requests.Response] = []
    asking = threading.Thread(target=lambda: answers.append(chat(srv, "b")))
    asking.start()

    def b() -> dict[str, object]:
        return next(r for r in srv.ps() if r["id"] == "b")

    wait_for(lambda: b()["waiting_for_cpu"], 30, "b to wait for the CPU")
    assert b()["cpu_threads"] == default_threads() and not answers
    stream.close()  # a's client goes away: a is idle, b's turn comes
    asking.join(60 * SLOWDOWN)
    assert answers and answers[0].status_code == 200
