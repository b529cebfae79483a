"""How the CLI talks to an OffGrid server: the running one, or one it starts in-process.

Synchronous HTTP through ``httpx2`` (the library ``huggingface_hub`` brings), imported
inside each call: it costs a command that never calls the server 150 ms or more to import.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NamedTuple

from offgrid.cli.common import settings_from
from offgrid.config import Settings
from offgrid.errors import (
    AuthenticationError,
    EngineError,
    EngineUnavailableError,
    ModelNotFoundError,
    OffGridError,
)

if TYPE_CHECKING:
    import httpx2

__all__ = ["Piece", "api_url", "call_server", "model_ids", "stream_reply"]

_KEY_HINT = " Give the CLI a key: OFFGRID_API_KEY=<key> (an admin makes one: offgrid keys create)."


def _auth() -> dict[str, str]:
    """The API key header, when OFFGRID_API_KEY (or the config file) gives one."""
    key = settings_from().api_key
    return {"Authorization": f"Bearer {key}"} if key else {}


def call_server(method: str, path: str, **kwargs: Any) -> Any:
    """Call the running server's API; EngineUnavailableError when none answers."""
    import httpx2

    settings = settings_from()
    url = f"http://{settings.host}:{settings.port}{path}"
    try:
        resp = httpx2.request(method, url, timeout=600, headers=_auth(), **kwargs)
    except httpx2.HTTPError as exc:
        raise EngineUnavailableError(
            f"No OffGrid server answers at {url} ({type(exc).__name__}). Start it: offgrid serve"
        ) from exc
    data = resp.json()
    if resp.status_code >= 400:
        message = str(data.get("error", {}).get("message", data))
        if resp.status_code == 401:
            raise AuthenticationError(message + _KEY_HINT)
        raise OffGridError(message)
    return data


def _events(url: str, body: dict[str, Any]) -> Iterator[str]:
    """POST ``body`` to ``url`` and yield the data of each server-sent event as it comes
    (httpx2's errors pass through; an error answer is raised as ours)."""
    import httpx2

    timeout = httpx2.Timeout(None, connect=10)
    with httpx2.stream("POST", url, json=body, timeout=timeout, headers=_auth()) as resp:
        if resp.status_code != 200:
            raise _api_error(resp)
        for line in resp.iter_lines():
            if line.startswith("data: "):
                yield line[6:]


def server_events(path: str, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """POST ``body`` to the running server and yield each server-sent event's JSON."""
    import httpx2

    settings = settings_from()
    url = f"http://{settings.host}:{settings.port}{path}"
    try:
        for data in _events(url, body):
            yield json.loads(data)
    except httpx2.HTTPError as exc:
        raise EngineUnavailableError(f"No OffGrid server answers at {url} ({exc}).") from exc


def _healthy(url: str) -> bool:
    import httpx2

    try:
        return httpx2.get(f"{url}/health", timeout=2).status_code == 200
    except httpx2.HTTPError:
        return False


@contextmanager
def api_url(settings: Settings) -> Iterator[str]:
    """The URL of a running OffGrid server, or of one started in a thread until exit.

    The in-process server listens on a free loopback port and stops its engines when the
    block ends, so ``offgrid run`` works with or without ``offgrid serve``.
    """
    url = f"http://{settings.host}:{settings.port}"
    if _healthy(url):
        yield url
        return
    from offgrid.engine.process import free_port
    from offgrid.server import make_server

    port = free_port()
    server = make_server(settings.with_overrides(host="127.0.0.1", port=port))
    thread = threading.Thread(target=server.run, name="offgrid-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise EngineUnavailableError("Could not start the in-process OffGrid server.")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def model_ids(base_url: str) -> list[str]:
    """The ids of the models the server at ``base_url`` offers."""
    import httpx2

    try:
        resp = httpx2.get(f"{base_url}/v1/models", timeout=30, headers=_auth())
        if resp.status_code != 200:
            raise _api_error(resp)
        return [m["id"] for m in resp.json()["data"]]
    except (httpx2.HTTPError, ValueError, KeyError) as exc:
        raise EngineError(f"Cannot list models at {base_url}: {exc}") from exc


class Piece(NamedTuple):
    """A streamed piece of a reply: of its answer, or of the model's reasoning before it."""

    text: str
    reasoning: bool = False


def stream_reply(base_url: str, model: str, messages: list[dict[str, str]]) -> Iterator[Piece]:
    """Yield the pieces of the assistant's reply as the server streams them."""
    import httpx2

    body = {"model": model, "messages": messages, "stream": True}
    try:
        for data in _events(f"{base_url}/v1/chat/completions", body):
            if data == "[DONE]":
                return
            event: dict[str, Any] = json.loads(data)
            if "error" in event:
                raise EngineError(str(event["error"].get("message", event["error"])))
            for choice in event.get("choices", []):
                delta = choice.get("delta") or {}
                if delta.get("reasoning_content"):
                    yield Piece(delta["reasoning_content"], reasoning=True)
                if delta.get("content"):
                    yield Piece(delta["content"])
    except httpx2.HTTPError as exc:
        raise EngineError(f"Cannot reach the server at {base_url}: {exc}") from exc


def _api_error(resp: httpx2.Response) -> OffGridError:
    resp.read()
    try:
        message = str(resp.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        message = resp.text[:500]
    if resp.status_code == 404:
        err = ModelNotFoundError("")
        err.message = message
        return err
    if resp.status_code == 401:
        return AuthenticationError(message + _KEY_HINT)
    return EngineError(f"The server answered {resp.status_code}: {message}")
