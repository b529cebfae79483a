"""Terminal chat against the API: streaming output, multi-turn history, ``exit`` and ``clear``.

Reads one user message per line, from a terminal (with line editing) or a pipe, and prints
the reply as it streams. Ctrl-C during a reply stops that reply; Ctrl-D or ``exit`` quits.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any, TextIO

import requests

from offgrid.errors import EngineError, ModelNotFoundError, OffGridError

__all__ = ["ChatSession", "stream_reply"]


def stream_reply(base_url: str, model: str, messages: list[dict[str, str]]) -> Iterator[str]:
    """Yield the pieces of the assistant's reply as the server streams them."""
    body = {"model": model, "messages": messages, "stream": True}
    try:
        resp = requests.post(
            f"{base_url}/v1/chat/completions", json=body, stream=True, timeout=(10, None)
        )
    except requests.RequestException as exc:
        raise EngineError(f"Cannot reach the server at {base_url}: {exc}") from exc
    with resp:
        if resp.status_code != 200:
            raise _api_error(resp)
        for line in resp.iter_lines():
            if not line.startswith(b"data: "):
                continue
            data = line[6:]
            if data == b"[DONE]":
                return
            event: dict[str, Any] = json.loads(data)
            if "error" in event:
                raise EngineError(str(event["error"].get("message", event["error"])))
            for choice in event.get("choices", []):
                piece = (choice.get("delta") or {}).get("content")
                if piece:
                    yield piece


def _api_error(resp: requests.Response) -> OffGridError:
    try:
        message = str(resp.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        message = resp.text[:500]
    if resp.status_code == 404:
        err = ModelNotFoundError("")
        err.message = message
        return err
    return EngineError(f"The server answered {resp.status_code}: {message}")


class ChatSession:
    """One conversation with one model."""

    def __init__(self, base_url: str, model: str, *, system: str | None = None) -> None:
        self.base_url = base_url
        self.model = model
        self.system = system
        self.history: list[dict[str, str]] = []
        self.clear()

    def check_model(self) -> None:
        """Fail early, naming the installed models, when the model does not exist."""
        try:
            resp = requests.get(f"{self.base_url}/v1/models", timeout=30)
            ids = [m["id"] for m in resp.json()["data"]]
        except (requests.RequestException, ValueError, KeyError) as exc:
            raise EngineError(f"Cannot list models at {self.base_url}: {exc}") from exc
        if self.model not in ids:
            raise ModelNotFoundError(self.model, ids)

    def clear(self) -> None:
        self.history = [{"role": "system", "content": self.system}] if self.system else []

    def send(self, text: str, write: Callable[[str], None]) -> str:
        """Send one user message, writing the reply as it streams; keep both in history."""
        self.history.append({"role": "user", "content": text})
        pieces: list[str] = []
        try:
            for piece in stream_reply(self.base_url, self.model, self.history):
                pieces.append(piece)
                write(piece)
        except KeyboardInterrupt:
            write("\n[stopped]")
        except OffGridError:
            self.history.pop()
            raise
        reply = "".join(pieces)
        self.history.append({"role": "assistant", "content": reply})
        return reply

    def loop(self, read_line: Callable[[], str], out: TextIO) -> None:
        """Chat until ``exit``/``quit`` or end of input."""

        def write(s: str) -> None:
            out.write(s)
            out.flush()

        while True:
            try:
                line = read_line()
            except EOFError:
                break
            text = line.strip()
            if not text:
                continue
            if text.lower() in ("exit", "quit", "/bye"):
                break
            if text.lower() == "clear":
                self.clear()
                write("[history cleared]\n")
                continue
            self.send(text, write)
            write("\n")
