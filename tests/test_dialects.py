"""Every client's dialect on the real engine, through the official clients: Ollama's native
API (``ollama``, langchain-ollama), Anthropic's Messages (``anthropic``), OpenAI's
Responses and the engine's other routes (tokenize, apply-template)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import ollama
import pytest
import requests

from conftest import GEMMA_ID, STARTER_ID, Server, link_models, start_server
from offgrid.engine.build import EngineBinary
from offgrid.engine.process import free_port

HELLO = [{"role": "user", "content": "Say hello in one short sentence."}]


@pytest.fixture
def client(server: Server) -> Iterator[ollama.Client]:
    with ollama.Client(host=server.url) as client:
        yield client


def test_ollama_client_chat_whole_and_streamed(client: ollama.Client, server: Server) -> None:
    reply = client.chat(model=STARTER_ID, messages=HELLO, options={"num_predict": 16, "seed": 1})
    assert reply.message.role == "assistant" and reply.message.content
    assert reply.done and reply.done_reason in ("stop", "length")
    assert reply.eval_count and 0 < reply.eval_count <= 16
    assert reply.prompt_eval_count and reply.total_duration and reply.eval_duration
    parts = list(
        client.chat(model=STARTER_ID, messages=HELLO, stream=True, options={"num_predict": 16})
    )
    assert len(parts) > 2 and parts[-1].done and not any(p.done for p in parts[:-1])
    assert "".join(p.message.content or "" for p in parts).strip()
    assert parts[-1].eval_count == len(parts) - 1 or parts[-1].eval_count


def test_ollama_client_generate_and_name_tag(client: ollama.Client, server: Server) -> None:
    reply = client.generate(model=f"{STARTER_ID}:latest", prompt="Hi", options={"num_predict": 8})
    assert reply.response and reply.done
    streamed = list(
        client.generate(model=STARTER_ID, prompt="Hi", stream=True, options={"num_predict": 8})
    )
    assert streamed[-1].done and "".join(p.response for p in streamed[:-1])


def test_ollama_json_format_is_grammar_constrained(client: ollama.Client, server: Server) -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    reply = client.chat(
        model=STARTER_ID,
        messages=[{"role": "user", "content": "Give me a number as JSON."}],
        format=schema,
        options={"num_predict": 32},
    )
    assert isinstance(json.loads(reply.message.content or "")["n"], int)


def test_ollama_embed_list_show_ps(client: ollama.Client, server: Server) -> None:
    emb = client.embed(model=STARTER_ID, input=["a cat", "a dog"])
    assert len(emb.embeddings) == 2 and len(emb.embeddings[0]) > 10
    old = client.embeddings(model=STARTER_ID, prompt="a cat")
    assert len(old.embedding) == len(emb.embeddings[0])
    names = {m.model for m in client.list().models}
    assert {STARTER_ID, GEMMA_ID} <= names
    shown = client.show(STARTER_ID)
    assert (
        shown.details
        and shown.details.format == "gguf"
        and "completion" in (shown.capabilities or [])
    )
    running = {m.model: m for m in client.ps().models}
    expires = running[STARTER_ID].expires_at  # Ollama's RFC 3339 time, parsed by its client
    assert expires is not None and expires.timestamp() > time.time()


def test_ollama_errors_are_response_errors(client: ollama.Client, server: Server) -> None:
    with pytest.raises(ollama.ResponseError) as err:
        client.chat(model="no-such-model", messages=HELLO)
    assert err.value.status_code == 404 and "no-such-model" in err.value.error
    with pytest.raises(ollama.ResponseError) as err:
        client.show("no-such-model")
    assert err.value.status_code == 404
    bad = requests.post(f"{server.url}/api/chat", data=b"{not json", timeout=10)
    assert bad.status_code == 400 and isinstance(bad.json()["error"], str)
    bad = requests.post(
        f"{server.url}/api/chat",
        json={
            "model": STARTER_ID,
            "messages": HELLO,
            "options": {"num_ctx": 99999, "bogus": 1},
            "stream": False,
        },
        timeout=60,
    )
    assert bad.status_code == 200  # options the engine cannot honour per request are ignored


def test_ollama_keep_alive_zero_unloads(client: ollama.Client, server: Server) -> None:
    client.generate(model=GEMMA_ID, prompt="", keep_alive="5m")
    assert GEMMA_ID in {m.model for m in client.ps().models}
    reply = client.generate(model=GEMMA_ID, prompt="", keep_alive=0)
    assert reply.done_reason == "unload"
    assert GEMMA_ID not in {m.model for m in client.ps().models}


def test_ollama_copy_and_delete_an_alias(client: ollama.Client, server: Server) -> None:
    client.copy(STARTER_ID, "starter-copy")
    assert "starter-copy" in {m.model for m in client.list().models}
    assert client.chat(model="starter-copy", messages=HELLO, options={"num_predict": 4}).done
    client.delete("starter-copy")
    assert "starter-copy" not in {m.model for m in client.list().models}
    assert STARTER_ID in {m.model for m in client.list().models}  # the model itself stays


def test_langchain_chat_ollama(server: Server) -> None:
    from langchain_ollama import ChatOllama

    llm = ChatOllama(model=STARTER_ID, base_url=server.url, num_predict=12)
    assert llm.invoke("Say hi.").content
    assert "".join(str(c.content) for c in llm.stream("Say hi.")).strip()
    llm._client._client.close()  # its httpx pool: no socket left behind


def test_anthropic_messages(server: Server) -> None:
    with anthropic.Anthropic(base_url=server.url, api_key="unused") as client:
        _anthropic_checks(client)


def _anthropic_checks(client: anthropic.Anthropic) -> None:
    msg = client.messages.create(
        model=STARTER_ID, max_tokens=8, system="You are terse.", messages=HELLO
    )
    assert msg.role == "assistant" and msg.content[0].type == "text"
    assert msg.stop_reason in ("max_tokens", "end_turn") and msg.usage.output_tokens <= 8
    story = [{"role": "user", "content": "Write a long story about the sea."}]
    # (a greeting can end within 3 tokens: "Hello." did once, with end_turn)
    with client.messages.stream(model=STARTER_ID, max_tokens=3, messages=story) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text and final.stop_reason == "max_tokens" and final.usage.output_tokens == 3
    with pytest.raises(anthropic.NotFoundError) as err:
        client.messages.create(model="no-such-model", max_tokens=8, messages=HELLO)
    assert err.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    counted = client.messages.count_tokens(model=STARTER_ID, messages=HELLO)
    assert counted.input_tokens > 3


def test_openai_responses_and_engine_routes(server: Server) -> None:
    resp = server.client().responses.create(model=STARTER_ID, input="Say hi.", max_output_tokens=16)
    assert resp.output_text
    tokens = requests.post(
        f"{server.url}/tokenize", json={"model": STARTER_ID, "content": "hello world"}, timeout=30
    ).json()["tokens"]
    assert tokens
    text = requests.post(
        f"{server.url}/detokenize", json={"model": STARTER_ID, "tokens": tokens}, timeout=30
    ).json()["content"]
    assert "hello world" in text
    prompt = requests.post(
        f"{server.url}/apply-template", json={"model": STARTER_ID, "messages": HELLO}, timeout=30
    ).json()["prompt"]
    assert "Say hello" in prompt


def test_a_second_listener_on_ollamas_port(
    tmp_path: Path, model_store: Path, engine_binary: EngineBinary
) -> None:
    """OFFGRID_OLLAMA_PORT: the same API (one runtime, one set of engines) on a second port."""
    models = link_models(
        model_store, tmp_path / "models", {f"{STARTER_ID}.gguf": f"{STARTER_ID}.gguf"}
    )
    port = free_port()
    srv = start_server(tmp_path, models, engine_binary, OFFGRID_OLLAMA_PORT=str(port))
    try:
        with ollama.Client(host=f"http://127.0.0.1:{port}") as client:
            assert client.chat(model=STARTER_ID, messages=HELLO, options={"num_predict": 2}).done
        assert STARTER_ID in [
            m["id"] for m in requests.get(f"{srv.url}/api/ps", timeout=10).json()["models"]
        ]
    finally:
        srv.stop()
