"""One llama-server child process serving one model: argv, start, health, supervise, stop.

States (``EngineState``): starting → ready → stopping → stopped, or → exited when the child
dies on its own; ``Engine._move`` is the one place that changes them and refuses the rest.
The child runs in its own process group (so a stop reaches everything it spawned) and gets
SIGKILL if OffGrid itself dies (PR_SET_PDEATHSIG), so no engine outlives the server.
Its output goes straight to a log file: no Python work per line, and the tail of the file
tells what happened when it crashes.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import secrets
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from importlib import resources
from pathlib import Path

import aiohttp

from offgrid.engine.build import EngineBinary
from offgrid.engine.cpu_variants import set_aside_faulting_variant
from offgrid.errors import EngineUnavailableError
from offgrid.models.model_info import POOLED
from offgrid.models.registry import ModelInfo

__all__ = [
    "Engine",
    "EngineOptions",
    "EngineState",
    "build_argv",
    "describe_exit",
    "engine_env",
    "free_port",
    "template_args",
]

log = logging.getLogger("offgrid.engine")

_PR_SET_PDEATHSIG = 1


class EngineState(StrEnum):
    """Where an engine is in its life; a string, so ``/api/ps`` shows it as it is."""

    STARTING = "starting"  # spawned, /health not ok yet
    READY = "ready"  # /health ok: serving
    STOPPING = "stopping"  # stop() sent its signals
    STOPPED = "stopped"  # stop() saw it gone: the end
    EXITED = "exited"  # it died on its own (a crash); stop() still reaps the group


_NEXT: dict[EngineState, frozenset[EngineState]] = {
    EngineState.STARTING: frozenset(
        {EngineState.READY, EngineState.EXITED, EngineState.STOPPING, EngineState.STOPPED}
    ),
    EngineState.READY: frozenset({EngineState.EXITED, EngineState.STOPPING}),
    EngineState.EXITED: frozenset({EngineState.STOPPING}),
    EngineState.STOPPING: frozenset({EngineState.STOPPED}),
    EngineState.STOPPED: frozenset(),
}
"""The transitions ``Engine._move`` allows; staying in a state is always allowed."""


@dataclass(frozen=True)
class EngineOptions:
    """How to run a model: per-request context, parallel slots, threads, GPU layers.

    ``gpu_layers`` None leaves offloading to the engine; a number is passed as ``-ngl``
    with the engine's own fitting turned off, so the engine does what placement decided.
    """

    context: int = 4096
    parallel: int = 4
    threads: int = 0
    gpu_layers: int | None = None
    embeddings: bool = True  # a chat model serves /v1/embeddings too
    extra_args: tuple[str, ...] = ()


def default_threads() -> int:
    """Physical cores when psutil can tell, else logical ones."""
    import psutil

    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


def template_args(model: ModelInfo) -> list[str]:
    """Give a chat model without a chat template one chosen by its architecture.

    A Jinja file keeps ``--jinja`` on (tools and json_schema need it); a bare
    ``--chat-template gemma`` would be read as a literal Jinja template.
    """
    if model.gguf is None or model.gguf.chat_template or model.kind != "chat":
        return []
    family = "gemma" if model.gguf.architecture.startswith("gemma") else "chatml"
    path = resources.files("offgrid.engine") / "templates" / f"{family}.jinja"
    return ["--chat-template-file", str(path)]


def build_argv(
    binary: Path, model: ModelInfo, options: EngineOptions, port: int, host: str = "127.0.0.1"
) -> list[str]:
    """The llama-server command line for ``model``.

    ``-c`` is split across the ``-np`` slots, so it is the per-request context times the
    slots; the per-request context is capped at what the model was trained for.
    The model's kind picks the mode: a reranker gets ``--reranking`` (rank pooling), an
    embedding model ``--embeddings`` with its own pooling (mean if it declares none, as
    ``/v1/embeddings`` needs one), a chat model ``--embeddings --pooling mean`` when
    ``options.embeddings``. An encoder (non-causal) must take each input in one batch,
    so its batches are a whole slot's context (llama-server refuses longer inputs than
    ``--ubatch-size``, 512 by default). A projector is passed with ``--mmproj``.
    """
    trained = model.gguf.context_length if model.gguf and model.gguf.context_length else 0
    per_slot = min(options.context, trained) if trained else options.context
    argv = [
        str(binary),
        "--model",
        str(model.path),
        "--alias",
        model.id,
        "--host",
        host,
        "--port",
        str(port),
        "--ctx-size",
        str(per_slot * options.parallel),
        "--parallel",
        str(options.parallel),
        "--threads",
        str(options.threads or default_threads()),
        "--jinja",
        "--no-webui",
    ]
    if options.gpu_layers is not None:
        argv += ["--n-gpu-layers", str(options.gpu_layers), "--fit", "off"]
    g, kind = model.gguf, model.kind
    if kind == "rerank":
        argv.append("--reranking")
    elif kind == "embedding":
        argv += ["--embeddings"] + ([] if g and g.pooling_type in POOLED else ["--pooling", "mean"])
    elif options.embeddings:
        argv += ["--embeddings", "--pooling", "mean"]
    if kind != "chat" and g and not g.causal_attention:
        argv += ["--batch-size", str(per_slot), "--ubatch-size", str(per_slot)]
    if model.projector is not None:
        argv += ["--mmproj", str(model.projector)]
    return argv + template_args(model) + list(options.extra_args)


# What the engine must not inherit: systemd's notify socket and watchdog are the server's
# own, and the key the CLI sends is not the engine's business.
_NOT_INHERITED = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "OFFGRID_API_KEY")


def engine_env(options: EngineOptions, secret: str | None = None) -> dict[str, str]:
    """The engine's environment: its secret, and with 0 GPU layers no GPU at all.

    ``secret`` goes in ``LLAMA_API_KEY`` (llama-server's ``--api-key``, read from the
    environment so that ``ps`` does not show it; /proc/PID/environ is readable only by the
    service's user): every request but ``/health`` then needs it, so the engine's loopback
    port is no way around OffGrid's keys and queues. A CUDA engine at ``-ngl 0`` still
    creates a CUDA context and runs prompt batches on the GPU (about 800 MiB of VRAM
    measured), which a model placed on the CPU because the GPU is full must not take.
    """
    env = {k: v for k, v in os.environ.items() if k not in _NOT_INHERITED}
    if secret is not None:
        env["LLAMA_API_KEY"] = secret
    if options.gpu_layers == 0:
        env |= {"CUDA_VISIBLE_DEVICES": "", "HIP_VISIBLE_DEVICES": ""}
    return env


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (the engine binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def describe_exit(code: int | None) -> str:
    """``signal 9`` or ``exit code 3``, as the logs and crash reports say it."""
    return f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"


def _tail(path: Path, lines: int = 15) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(max(0, fh.seek(0, os.SEEK_END) - 16384))
            text = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class Engine:
    """A running llama-server for one model. Create with ``await Engine.start(...)``."""

    def __init__(
        self, model: ModelInfo, argv: list[str], port: int, log_path: Path, host: str
    ) -> None:
        self.model = model
        self.argv = argv
        self.port = port
        self.host = host
        self.url = f"http://{host}:{port}"
        self.log_path = log_path
        self._state = EngineState.STARTING
        self.started_at = time.time()
        self.proc: asyncio.subprocess.Process | None = None
        self._watch: asyncio.Task[None] | None = None
        self.on_exit: Callable[[Engine], None] | None = None
        self.exit_reason = ""
        self.secret = secrets.token_urlsafe(32)  # what the engine asks of every request
        self.auth_header = f"Bearer {self.secret}"

    @property
    def state(self) -> EngineState:
        return self._state

    def _move(self, to: EngineState) -> None:
        """Change the state; a transition ``_NEXT`` does not list is a bug, so it raises."""
        if to is not self._state and to not in _NEXT[self._state]:
            raise RuntimeError(f"engine for {self.model.id}: no transition {self._state} → {to}")
        self._state = to

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    @classmethod
    async def start(
        cls,
        binary: EngineBinary,
        model: ModelInfo,
        options: EngineOptions,
        *,
        log_dir: Path,
        timeout: float,
        host: str = "127.0.0.1",
    ) -> Engine:
        """Spawn the engine and return once its ``/health`` says ok.

        Fails fast with the engine's last log lines if it exits while loading, and
        stops it if it is not ready within ``timeout`` seconds.
        """
        port = free_port(host)
        argv = build_argv(binary.path, model, options, port, host)
        log_dir.mkdir(parents=True, exist_ok=True)
        log_path = log_dir / f"engine-{model.id}.log"
        engine = cls(model, argv, port, log_path, host)
        await engine._spawn(engine_env(options, engine.secret))
        try:
            await engine._wait_ready(timeout)
            engine._check_alive()  # it may die between its last /health and now
        except BaseException:
            await engine.stop()
            faulted = engine.proc is not None and engine.proc.returncode == -signal.SIGILL
            if (
                faulted
                and (await asyncio.to_thread(set_aside_faulting_variant, binary.path.parent))
                is not None
            ):
                return await cls.start(  # with the next best CPU kernels, until none is left
                    binary, model, options, log_dir=log_dir, timeout=timeout, host=host
                )
            raise
        engine._move(EngineState.READY)
        log.info(
            "engine for %s ready on port %d (pid %s) in %.2f s",
            model.id,
            port,
            engine.pid,
            time.time() - engine.started_at,
        )
        return engine

    async def _spawn(self, env: dict[str, str]) -> None:
        with self.log_path.open("wb") as out:
            out.write(("$ " + " ".join(self.argv) + "\n").encode())
            out.flush()
            try:
                self.proc = await asyncio.create_subprocess_exec(
                    *self.argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=out,
                    stderr=out,
                    start_new_session=True,
                    preexec_fn=die_with_parent,
                    env=env,
                )
            except OSError as exc:
                raise EngineUnavailableError(
                    f"Cannot start the engine {self.argv[0]}: {exc.strerror}"
                ) from exc
        self._watch = asyncio.create_task(self._supervise())

    async def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
            while True:
                self._check_alive()
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with http.get(f"{self.url}/health") as resp:
                        if resp.status == 200:
                            return
                if time.monotonic() > deadline:
                    raise EngineUnavailableError(
                        f"The engine for '{self.model.id}' did not become ready within "
                        f"{timeout:.0f} s (OFFGRID_LOAD_TIMEOUT). See {self.log_path}."
                    )
                await asyncio.sleep(0.02)

    def _check_alive(self) -> None:
        """Raise, with the log's last lines, if the child has exited while loading."""
        if not self.alive:
            raise EngineUnavailableError(
                f"The engine for '{self.model.id}' exited while loading "
                f"(exit code {self.proc.returncode if self.proc else '?'}). "
                f"Last lines of {self.log_path}:\n{_tail(self.log_path)}"
            )

    async def _supervise(self) -> None:
        assert self.proc is not None
        code = await self.proc.wait()
        if self._state not in (EngineState.STOPPING, EngineState.STOPPED):
            how = describe_exit(code)
            self.exit_reason = how
            log.error(
                "engine for %s (pid %s) died with %s; it restarts on the next request. "
                "Last lines of %s:\n%s",
                self.model.id,
                self.proc.pid,
                how,
                self.log_path,
                _tail(self.log_path),
            )
            self._move(EngineState.EXITED)
        if self.on_exit:
            self.on_exit(self)

    async def wait_exited(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the child to be seen dead; True if it is."""
        if self._watch is None:
            return not self.alive
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._watch), timeout)
        return not self.alive

    async def stop(self, grace: float = 5.0) -> None:
        """SIGTERM the process group, wait ``grace`` seconds, then SIGKILL it: stopping,
        then stopped. From exited too (the group may outlive the child); idempotent."""
        if self.proc is None or self._state is EngineState.STOPPED:
            self._move(EngineState.STOPPED)
            return
        self._move(EngineState.STOPPING)
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            if self.proc.returncode is not None:
                break
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, sig)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.proc.wait()), wait)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # anything left in the group
        if self._watch:
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        self._move(EngineState.STOPPED)
        log.info("engine for %s stopped", self.model.id)
