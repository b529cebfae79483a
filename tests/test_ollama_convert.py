"""Ollama's shapes to and from the engine's (pure): options, format, images, tool calls,
and a stream whose events arrive split or several at once."""

from __future__ import annotations

import json
import time

import pytest

from offgrid.api.ollama.convert import StreamShaper, engine_request, whole_answer
from offgrid.errors import BadRequestError


def test_options_format_think_and_images_map_to_the_engine() -> None:
    path, body = engine_request(
        "/api/chat",
        {
            "model": "m",
            "messages": [{"role": "user", "content": "hi", "images": ["iVBORw0KGgo="]}],
            "options": {"num_predict": 5, "top_k": 3, "num_ctx": 99, "seed": 7},
            "format": "json",
            "think": False,
        },
        stream=True,
    )
    assert path == "/v1/chat/completions"
    assert body["max_tokens"] == 5 and body["top_k"] == 3 and body["seed"] == 7
    assert "num_ctx" not in body  # the engine's context is set at load: ignored, as Ollama does
    assert body["response_format"] == {"type": "json_object"}
    assert body["chat_template_kwargs"] == {"enable_thinking": False}
    parts = body["messages"][0]["content"]
    assert parts[1]["image_url"]["url"].startswith("data:image/png;base64,")
    assert body["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize(
    "payload",
    [
        {"model": "m", "messages": "hi"},
        {"model": "m", "messages": [{"content": "no role"}]},
        {"model": "m", "messages": [], "options": [1]},
        {"model": "m", "messages": [], "format": "yaml"},
        {"model": "m", "prompt": "hi", "images": 1},  # found by bench/fuzz.py: a 500
        {"model": "m", "prompt": "hi", "images": [7]},
    ],
)
def test_malformed_requests_are_refused(payload: dict[str, object]) -> None:
    path = "/api/generate" if "prompt" in payload else "/api/chat"
    with pytest.raises(BadRequestError):
        engine_request(path, payload, stream=False)


def test_generate_with_system_and_raw() -> None:
    _, body = engine_request("/api/generate", {"model": "m", "prompt": "p", "system": "s"}, False)
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    path, body = engine_request("/api/generate", {"model": "m", "prompt": "p", "raw": True}, False)
    assert path == "/v1/completions" and body["prompt"] == "p"


def test_whole_answer_with_tool_calls_and_thinking() -> None:
    engine = {
        "choices": [
            {
                "finish_reason": "tool_calls",
                "message": {
                    "content": "",
                    "reasoning_content": "hmm",
                    "tool_calls": [{"function": {"name": "f", "arguments": '{"x": 1}'}}],
                },
            }
        ],
        "timings": {"prompt_n": 3, "prompt_ms": 1.5, "predicted_n": 4, "predicted_ms": 2.0},
    }
    out = whole_answer("/api/chat", "m", json.dumps(engine).encode(), time.perf_counter())
    assert out["message"]["tool_calls"] == [{"function": {"name": "f", "arguments": {"x": 1}}}]
    assert out["message"]["thinking"] == "hmm" and out["done_reason"] == "stop"
    assert out["prompt_eval_count"] == 3 and out["eval_duration"] == 2_000_000


def test_stream_split_events_and_streamed_tool_calls() -> None:
    events = [
        {"choices": [{"delta": {"content": "He"}}]},
        {"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"name": "f"}}]}}]},
        {"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"a"'}}]}}]},
        {"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": ": 2}"}}]}}]},
        {"choices": [{"finish_reason": "length", "delta": {}}], "timings": {"predicted_n": 9}},
    ]
    raw = (
        b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"
    )
    shaper = StreamShaper("/api/chat", "m", time.perf_counter())
    lines = [
        json.loads(line) for i in range(0, len(raw), 7) for line in shaper.feed(raw[i : i + 7])
    ]
    assert lines[0]["message"]["content"] == "He" and not lines[0]["done"]
    assert lines[1]["message"]["tool_calls"] == [{"function": {"name": "f", "arguments": {"a": 2}}}]
    assert lines[-1]["done"] and lines[-1]["done_reason"] == "length"
    assert lines[-1]["eval_count"] == 9 and len(lines) == 3


def test_an_error_event_becomes_an_error_line() -> None:
    shaper = StreamShaper("/api/generate", "m", time.perf_counter())
    (line,) = shaper.feed(b'data: {"error": {"message": "boom"}}\n\n')
    assert json.loads(line) == {"error": "boom"}
