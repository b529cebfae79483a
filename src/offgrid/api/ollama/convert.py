"""Ollama's request and answer shapes, to and from the engine's OpenAI ones (pure).

Requests: ``options`` become the engine's sampling fields (``num_predict`` → ``max_tokens``,
``num_keep`` → ``n_keep``, the rest by their own names; what the engine cannot honour per
request, such as ``num_ctx`` or ``num_gpu``, is ignored, as Ollama ignores unknown options),
``format`` becomes ``response_format`` (the engine's grammar), ``images`` become
``image_url`` parts, ``think`` the template's ``enable_thinking``. Answers: content,
``thinking`` (the engine's ``reasoning_content``), ``tool_calls`` with their arguments as
objects, and the engine's ``timings`` as Ollama's counts and durations in nanoseconds.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from offgrid.errors import BadRequestError

__all__ = ["StreamShaper", "created_at", "embed_answer", "engine_request", "whole_answer"]

_OPTIONS = {
    "num_predict": "max_tokens",
    "num_keep": "n_keep",
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "typical_p": "typical_p",
    "seed": "seed",
    "stop": "stop",
    "repeat_penalty": "repeat_penalty",
    "repeat_last_n": "repeat_last_n",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "mirostat": "mirostat",
    "mirostat_tau": "mirostat_tau",
    "mirostat_eta": "mirostat_eta",
}
_DONE_REASONS = {"stop": "stop", "length": "length", "tool_calls": "stop"}


def created_at() -> str:
    """Now, as Ollama writes it (RFC 3339, UTC)."""
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"


def _options(payload: Mapping[str, Any]) -> dict[str, Any]:
    options = payload.get("options") or {}
    if not isinstance(options, dict):
        raise BadRequestError("'options' must be an object.", param="options")
    out = {_OPTIONS[k]: v for k, v in options.items() if k in _OPTIONS and v is not None}
    if isinstance(out.get("max_tokens"), int) and out["max_tokens"] < 0:
        del out["max_tokens"]  # -1: no limit, -2: fill the context (the engine's own default)
    return out


def _format(fmt: object) -> dict[str, Any] | None:
    if fmt in (None, ""):
        return None
    if fmt == "json":
        return {"type": "json_object"}
    if isinstance(fmt, dict):
        return {"type": "json_schema", "json_schema": {"name": "format", "schema": fmt}}
    raise BadRequestError("'format' must be \"json\" or a JSON schema.", param="format")


def _image_part(image: object) -> dict[str, Any]:
    if not isinstance(image, str):
        raise BadRequestError("Each image must be a base64 string.", param="images")
    mime = "image/png" if image.startswith("iVBOR") else "image/jpeg"
    return {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{image}"}}


def _message(m: object) -> dict[str, Any]:
    """One Ollama chat message as OpenAI's."""
    if not isinstance(m, dict) or not isinstance(m.get("role"), str):
        raise BadRequestError("Each message must be an object with a 'role'.", param="messages")
    content = m.get("content") or ""
    if not isinstance(content, str):
        raise BadRequestError("A message's 'content' must be a string.", param="messages")
    out: dict[str, Any] = {"role": m["role"], "content": content}
    if images := m.get("images"):
        if not isinstance(images, list):
            raise BadRequestError("'images' must be a list of base64 strings.", param="images")
        out["content"] = [{"type": "text", "text": content}, *map(_image_part, images)]
    if calls := m.get("tool_calls"):
        out["tool_calls"] = [
            {
                "id": f"call_{i}",
                "type": "function",
                "function": {
                    "name": c["function"]["name"],
                    "arguments": json.dumps(c["function"].get("arguments", {})),
                },
            }
            for i, c in enumerate(calls)
        ]
    if m["role"] == "tool" and m.get("tool_name"):
        out["name"] = m["tool_name"]
    return out


def engine_request(
    path: str, payload: Mapping[str, Any], stream: bool
) -> tuple[str, dict[str, Any]]:
    """The engine's path and OpenAI body for an Ollama request to ``path``."""
    if path in ("/api/embed", "/api/embeddings"):
        text = payload.get("input") if path == "/api/embed" else payload.get("prompt")
        if not isinstance(text, (str, list)):
            raise BadRequestError("'input' must be a string or a list of strings.", param="input")
        return "/v1/embeddings", {"model": payload["model"], "input": text}
    body: dict[str, Any] = {"model": payload["model"], "stream": stream, **_options(payload)}
    if stream:
        body["stream_options"] = {"include_usage": True}
    if (response_format := _format(payload.get("format"))) is not None:
        body["response_format"] = response_format
    if (think := payload.get("think")) is not None:
        body["chat_template_kwargs"] = {"enable_thinking": bool(think)}
    if path == "/api/chat":
        messages = payload.get("messages")
        if not isinstance(messages, list):
            raise BadRequestError("'messages' must be a list.", param="messages")
        body["messages"] = [_message(m) for m in messages]
        if tools := payload.get("tools"):
            body["tools"] = tools
        return "/v1/chat/completions", body
    prompt = payload.get("prompt") or ""
    if not isinstance(prompt, str):
        raise BadRequestError("'prompt' must be a string.", param="prompt")
    if payload.get("raw"):
        return "/v1/completions", {**body, "prompt": prompt}
    user: dict[str, Any] = {"role": "user", "content": prompt}
    if images := payload.get("images"):
        user = _message({**user, "images": images})
    system = payload.get("system")
    body["messages"] = [{"role": "system", "content": system}] * bool(system) + [user]
    return "/v1/chat/completions", body


def _stats(answer: Mapping[str, Any], began: float) -> dict[str, Any]:
    """Ollama's counts and durations (ns) from the engine's timings and usage."""
    t = answer.get("timings") or {}
    usage = answer.get("usage") or {}
    return {
        "total_duration": int((time.perf_counter() - began) * 1e9),
        "load_duration": 0,
        "prompt_eval_count": int(t.get("prompt_n", usage.get("prompt_tokens", 0))),
        "prompt_eval_duration": int(t.get("prompt_ms", 0) * 1e6),
        "eval_count": int(t.get("predicted_n", usage.get("completion_tokens", 0))),
        "eval_duration": int(t.get("predicted_ms", 0) * 1e6),
    }


def _tool_calls(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for c in calls:
        fn = c.get("function") or {}
        try:
            arguments = json.loads(fn.get("arguments") or "{}")
        except ValueError:
            arguments = {"_raw": fn.get("arguments")}
        out.append({"function": {"name": fn.get("name", ""), "arguments": arguments}})
    return out


def _piece(
    chat: bool, content: str, thinking: str | None, calls: list[Any] | None
) -> dict[str, Any]:
    """The part of an Ollama line that carries text: ``message`` (chat) or ``response``."""
    if chat:
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if thinking:
            message["thinking"] = thinking
        if calls:
            message["tool_calls"] = _tool_calls(calls)
        return {"message": message}
    out: dict[str, Any] = {"response": content}
    if thinking:
        out["thinking"] = thinking
    return out


def whole_answer(path: str, name: str, data: bytes, began: float) -> dict[str, Any]:
    """The engine's whole chat or completion answer as Ollama's."""
    answer = json.loads(data)
    choice = (answer.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    content = message.get("content") or choice.get("text") or ""
    piece = _piece(
        path == "/api/chat", content, message.get("reasoning_content"), message.get("tool_calls")
    )
    return {
        "model": name,
        "created_at": created_at(),
        **piece,
        "done": True,
        "done_reason": _DONE_REASONS.get(choice.get("finish_reason") or "stop", "stop"),
        **_stats(answer, began),
    }


def embed_answer(path: str, name: str, data: bytes, began: float) -> dict[str, Any]:
    """The engine's embeddings as ``/api/embed``'s (or the older ``/api/embeddings``')."""
    answer = json.loads(data)
    vectors = [d["embedding"] for d in sorted(answer["data"], key=lambda d: d["index"])]
    if path == "/api/embeddings":
        return {"embedding": vectors[0] if vectors else []}
    usage = answer.get("usage") or {}
    return {
        "model": name,
        "embeddings": vectors,
        "total_duration": int((time.perf_counter() - began) * 1e9),
        "load_duration": 0,
        "prompt_eval_count": int(usage.get("prompt_tokens", 0)),
    }


class StreamShaper:
    """The engine's server-sent events, fed as they come, out as Ollama's NDJSON lines."""

    def __init__(self, path: str, name: str, began: float) -> None:
        self.chat = path == "/api/chat"
        self.name = name
        self.began = began
        self._buf = b""
        self._calls: dict[int, dict[str, Any]] = {}  # tool calls, streamed in pieces
        self._reason = "stop"
        self._last: dict[str, Any] = {}  # the chunk with timings and usage

    def feed(self, data: bytes) -> list[bytes]:
        """The lines that ``data`` completes (events may arrive split or several at once)."""
        self._buf += data
        *events, self._buf = self._buf.split(b"\n\n")
        lines = []
        for event in events:
            for field in event.split(b"\n"):
                if field.startswith(b"data: "):
                    lines += self._event(field[6:])
        return lines

    def _line(self, body: dict[str, Any]) -> bytes:
        head = {"model": self.name, "created_at": created_at()}
        return json.dumps(head | body).encode() + b"\n"

    def _event(self, data: bytes) -> list[bytes]:
        if data.strip() == b"[DONE]":
            return self._final()
        chunk = json.loads(data)
        if "error" in chunk:
            error = chunk["error"]
            return [json.dumps({"error": error.get("message", str(error))}).encode() + b"\n"]
        if chunk.get("timings") or chunk.get("usage"):
            self._last = chunk
        out = []
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {"content": choice.get("text")}
            for call in delta.get("tool_calls") or []:
                self._gather(call)
            if choice.get("finish_reason"):
                self._reason = _DONE_REASONS.get(choice["finish_reason"], "stop")
            content, thinking = delta.get("content") or "", delta.get("reasoning_content")
            if content or thinking:
                out.append(
                    self._line({**_piece(self.chat, content, thinking, None), "done": False})
                )
        return out

    def _gather(self, call: dict[str, Any]) -> None:
        held = self._calls.setdefault(
            call.get("index", 0), {"function": {"name": "", "arguments": ""}}
        )
        fn = call.get("function") or {}
        held["function"]["name"] += fn.get("name") or ""
        held["function"]["arguments"] += fn.get("arguments") or ""

    def _final(self) -> list[bytes]:
        out = []
        if self._calls:
            calls = [self._calls[i] for i in sorted(self._calls)]
            out.append(self._line({**_piece(self.chat, "", None, calls), "done": False}))
        last = {**_piece(self.chat, "", None, None), "done": True, "done_reason": self._reason}
        out.append(self._line(last | _stats(self._last, self.began)))
        return out
