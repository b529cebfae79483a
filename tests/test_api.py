"""The OpenAI-compatible API, end to end: real server, real engine, official openai client."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import jsonschema
import openai
import pytest
import requests

from conftest import (
    GEMMA_ID,
    STARTER_ID,
    Server,
    link_models,
    start_server,
    stream_data,
    wait_for,
)
from offgrid.engine.build import EngineBinary

HELLO = [{"role": "user", "content": "Say hello in one short sentence."}]


def test_health_matches_the_seed(server: Server) -> None:
    body = requests.get(f"{server.url}/health", timeout=10).json()
    assert body["status"] == "ok"
    assert datetime.fromisoformat(body["timestamp"]).tzinfo is not None


def test_models_list_has_every_installed_model(server: Server) -> None:
    models = server.client().models.list()
    ids = {m.id for m in models.data}
    assert ids == {STARTER_ID, GEMMA_ID}
    card = next(m for m in models.data if m.id == STARTER_ID)
    assert card.object == "model" and card.owned_by == "offgrid-llm" and card.created > 0


def test_chat_non_stream(server: Server) -> None:
    resp = server.client().chat.completions.create(model=STARTER_ID, messages=HELLO, max_tokens=24)
    assert resp.model == STARTER_ID
    assert resp.choices[0].message.content
    assert resp.choices[0].finish_reason in ("stop", "length")
    assert resp.usage is not None and 0 < resp.usage.completion_tokens <= 24


def test_chat_stream_with_usage(server: Server) -> None:
    stream = server.client().chat.completions.create(
        model=STARTER_ID,
        messages=HELLO,
        max_tokens=24,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    usage = [c.usage for c in chunks if c.usage]
    assert text.strip()
    assert len(finishes) == 1
    assert len(usage) == 1 and usage[0].completion_tokens > 0
    assert all(c.model == STARTER_ID for c in chunks)


def test_max_tokens_is_honoured(server: Server) -> None:
    resp = server.client().chat.completions.create(
        model=STARTER_ID,
        messages=[{"role": "user", "content": "Write a long story about the sea."}],
        max_tokens=5,
    )
    assert resp.usage is not None and resp.usage.completion_tokens == 5
    assert resp.choices[0].finish_reason == "length"


def test_completions_stream_and_non_stream(server: Server) -> None:
    client = server.client()
    resp = client.completions.create(model=STARTER_ID, prompt="Once upon a time", max_tokens=12)
    assert resp.choices[0].text and resp.usage is not None
    stream = client.completions.create(
        model=STARTER_ID, prompt="Once upon a time", max_tokens=12, stream=True
    )
    text = "".join(c.choices[0].text for c in stream if c.choices)
    assert text


def test_temperature_zero_stream_equals_non_stream(server: Server) -> None:
    client = server.client()
    args = {
        "model": STARTER_ID,
        "messages": [{"role": "user", "content": "List three colours."}],
        "max_tokens": 30,
        "temperature": 0,
        "seed": 42,
    }
    whole = client.chat.completions.create(**args).choices[0].message.content  # type: ignore[call-overload]
    streamed = "".join(
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(**args, stream=True)  # type: ignore[call-overload]
        if c.choices
    )
    assert whole and whole == streamed


def test_json_schema_output_validates(server: Server) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    resp = server.client().chat.completions.create(
        model=STARTER_ID,
        messages=[{"role": "user", "content": "Invent a person. Reply in JSON."}],
        max_tokens=200,  # greedy, with room: a sampled name once ran past 60 tokens
        temperature=0,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "person", "schema": schema, "strict": True},
        },
    )
    jsonschema.validate(json.loads(resp.choices[0].message.content or ""), schema)


def test_embeddings(server: Server) -> None:
    resp = server.client().embeddings.create(model=STARTER_ID, input=["hello", "world"])
    assert len(resp.data) == 2
    assert len(resp.data[0].embedding) == 576  # SmolLM2-135M's embedding width
    assert resp.data[0].embedding != resp.data[1].embedding


def test_eight_concurrent_chats_all_succeed(server: Server) -> None:
    client = server.client()

    def one(i: int) -> str:
        resp = client.chat.completions.create(
            model=STARTER_ID,
            messages=[{"role": "user", "content": f"Count to {i + 2}."}],
            max_tokens=16,
        )
        return resp.choices[0].message.content or ""

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, range(8)))
    assert all(answers)


def test_client_that_drops_mid_stream_frees_its_slot(server: Server) -> None:
    client = server.client()
    client.chat.completions.create(model=STARTER_ID, messages=HELLO, max_tokens=1)

    def busy() -> int:
        return sum(1 for s in server.engine(STARTER_ID, "/slots").json() if s["is_processing"])

    lines = stream_data(
        server.url,
        STARTER_ID,
        messages=[{"role": "user", "content": "Write a very long essay about rivers."}],
        max_tokens=4000,
    )
    for _ in range(5):
        next(lines)
    assert busy() == 1
    lines.close()  # the client goes away mid-stream
    wait_for(lambda: busy() == 0, 10, "the engine slot to be freed")
    assert requests.get(f"{server.url}/health", timeout=5).status_code == 200


def test_unknown_model_is_not_found(server: Server) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        server.client().chat.completions.create(model="no-such-model", messages=HELLO)
    body = err.value.response.json()["error"]
    assert STARTER_ID in body["message"] and body["code"] == "model_not_found"
    assert set(body) == {"message", "type", "param", "code"}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b"[1, 2]", None),
        (json.dumps({"messages": HELLO}).encode(), "model"),
        (json.dumps({"model": STARTER_ID}).encode(), "messages"),
    ],
)
def test_bad_requests_are_400_in_openai_shape(
    server: Server, body: bytes, param: str | None
) -> None:
    resp = requests.post(
        f"{server.url}/v1/chat/completions",
        data=body,
        headers={"Content-Type": "application/json"},
        timeout=10,
    )
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert "Traceback" not in resp.text


def test_engine_errors_keep_openai_shape(server: Server) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        server.client().chat.completions.create(
            model=STARTER_ID,
            messages=[{"role": "nobody", "content": 3}],  # type: ignore[list-item]
        )
    assert set(err.value.response.json()["error"]) == {"message", "type", "param", "code"}


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def test_tools_reach_the_engine(server: Server) -> None:
    """`tools` is passed through: the engine itself rejects tools combined with a grammar.

    (SmolLM2's template cannot describe tools, so a real tool call cannot be asked of it;
    the engine's own complaint proves the field arrived, unlike relays that drop it.)
    """
    with pytest.raises(openai.BadRequestError) as err:
        server.client().chat.completions.create(
            model=STARTER_ID,
            messages=[{"role": "user", "content": "Weather in Paris?"}],
            tools=[WEATHER_TOOL],  # type: ignore[list-item]
            extra_body={"grammar": 'root ::= "x"'},
            max_tokens=4,
        )
    assert "with tools" in err.value.response.json()["error"]["message"]


def test_logprobs_and_stop_pass_through(server: Server) -> None:
    resp = server.client().chat.completions.create(
        model=STARTER_ID,
        messages=[{"role": "user", "content": "Count: 1, 2, 3, 4, 5, 6"}],
        max_tokens=30,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
        stop=["5"],
    )
    choice = resp.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content
    assert len(choice.logprobs.content[0].top_logprobs) == 2
    assert "5" not in (choice.message.content or "")


def test_max_completion_tokens_is_honoured(server: Server) -> None:
    resp = server.client().chat.completions.create(
        model=STARTER_ID,
        messages=[{"role": "user", "content": "Write a long story."}],
        max_completion_tokens=3,
    )
    assert resp.usage is not None and resp.usage.completion_tokens == 3


def test_model_without_template_chats(server: Server) -> None:
    """Gemma 3 270M's GGUF has no chat template: one is chosen by its architecture."""
    resp = server.client().chat.completions.create(
        model=GEMMA_ID, messages=HELLO, max_tokens=16, temperature=0
    )
    text = resp.choices[0].message.content or ""
    assert text.strip()
    assert "<start_of_turn>" not in text
    # and the swap back works
    again = server.client().chat.completions.create(model=STARTER_ID, messages=HELLO, max_tokens=4)
    assert again.choices[0].message.content


def test_sse_chunks_arrive_as_they_are_made(server: Server) -> None:
    """The relay must not buffer: the first chunk comes long before the last one."""
    arrivals: list[float] = []
    start = time.monotonic()
    for _ in stream_data(server.url, STARTER_ID, max_tokens=60, ignore_eos=True):
        arrivals.append(time.monotonic() - start)
    assert len(arrivals) > 30
    assert arrivals[0] < arrivals[-1] / 2, arrivals[:3] + arrivals[-3:]


def test_an_engine_port_is_no_way_around_offgrid(server: Server) -> None:
    """Issue 15: each engine asks its own secret of every request but /health, so a local
    user cannot skip OffGrid's keys and queues by calling the engine's port."""
    server.client().chat.completions.create(model=STARTER_ID, messages=HELLO, max_tokens=1)
    engine = f"http://127.0.0.1:{server.engine_port(STARTER_ID)}"
    body = {"model": STARTER_ID, "messages": HELLO, "max_tokens": 1}
    r = requests.post(f"{engine}/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 401, r.text
    assert requests.get(f"{engine}/slots", timeout=5).status_code == 401
    assert requests.get(f"{engine}/health", timeout=5).status_code == 200
    assert server.engine(STARTER_ID, "/slots").status_code == 200  # with its secret
    cmdline = Path(f"/proc/{server.engine_pid(STARTER_ID)}/cmdline").read_bytes()
    assert b"api-key" not in cmdline


def test_the_offline_guard_catches_a_connection_beyond_loopback(
    tmp_path: Path, model_store: Path, engine_binary: EngineBinary
) -> None:
    """The guard every test server carries (tests/offline_guard) sees an outbound try: here
    one asked for on purpose (a Hub search), so this test reads and clears its record."""
    models = link_models(model_store, tmp_path / "m", {f"{STARTER_ID}.gguf": f"{STARTER_ID}.gguf"})
    srv = start_server(tmp_path, models, engine_binary, HF_ENDPOINT="http://192.0.2.1:9")
    try:
        got = requests.get(f"{srv.url}/api/hub/search", params={"q": "x"}, timeout=30)
        assert got.status_code == 503  # refused at once by the guard: "cannot be reached"
        assert "192.0.2.1:9" in srv.offline_log.read_text()
        srv.offline_log.unlink()
    finally:
        srv.stop()


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": 7}]}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "tools": 3}),
        ("/v1/embeddings", {"input": {"text": "x"}}),
        ("/v1/completions", {"prompt": {"a": 1}}),
        # found by tests/test_fuzz.py
        ("/v1/chat/completions", {"messages": [{"content": "no role"}]}),
        ("/v1/embeddings", {"input": [1.5, -2e300]}),
        ("/detokenize", {"tokens": [1, 10_000_000]}),
    ],
)
def test_what_the_engine_cannot_parse_is_a_400_not_a_500(
    server: Server, path: str, body: dict[str, object]
) -> None:
    """Issue 18: the engine answers 500 for its JSON library's errors, which only a
    malformed request raises; they reach the client as the 400s they are."""
    for stream in (False, True):
        got = requests.post(
            f"{server.url}{path}",
            json={"model": STARTER_ID, **body, **({"stream": True} if stream else {})},
            timeout=60,
        )
        assert got.status_code == 400, (stream, got.text)
        assert got.json()["error"]["type"] == "invalid_request_error"
    ok = server.client().chat.completions.create(model=STARTER_ID, messages=HELLO, max_tokens=2)
    assert ok.choices[0].message.content is not None
