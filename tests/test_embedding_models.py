"""A real embedding model (all-MiniLM-L6-v2, BERT) served beside a chat model: its kind and
capabilities from its GGUF, its engine in embedding mode, vectors through each dialect's
official client, and clear refusals where an embedding model cannot do what is asked.
A reranker of the same shape (random head: ``tests/minilm.py``) for the rerank path."""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import ollama
import openai
import pytest
import requests

from conftest import STARTER_ID, Server, serving
from minilm import FILE_NAME, MODEL_ID, RANKER_FILE, RANKER_ID
from offgrid.engine.build import EngineBinary

CAT, KITTEN, MARKET = (
    "A cat sleeps on the warm windowsill.",
    "A kitten naps in the sun by the window.",
    "Stock prices fell sharply on Tuesday.",
)


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, model_store: Path, engine_binary: EngineBinary
) -> Iterator[Server]:
    files = [FILE_NAME, RANKER_FILE, f"{STARTER_ID}.gguf"]
    yield from serving(tmp_path_factory.mktemp("embed"), model_store, files, engine_binary)


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def get(served: Server, path: str) -> list[dict[str, object]]:
    models: list[dict[str, object]] = requests.get(served.url + path, timeout=10).json()["models"]
    return models


def test_the_registry_knows_an_embedding_model_from_its_gguf(served: Server) -> None:
    models = {
        m["id"]: m for m in requests.get(f"{served.url}/api/models", timeout=10).json()["models"]
    }
    assert models[MODEL_ID]["kind"] == "embedding" and models[STARTER_ID]["kind"] == "chat"
    assert models[RANKER_ID]["kind"] == "rerank"
    tags = {
        m["name"]: m for m in requests.get(f"{served.url}/api/tags", timeout=10).json()["models"]
    }
    assert tags[MODEL_ID]["capabilities"] == ["embedding"]
    assert "completion" in tags[STARTER_ID]["capabilities"]
    listed = {m.id: m for m in served.client().models.list().data}
    assert (listed[MODEL_ID].model_extra or {}).get("capabilities") == ["embedding"]
    out = subprocess.run(
        [sys.executable, "-m", "offgrid", "list"],
        env={**served.env, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "embedding" in next(line for line in out.splitlines() if MODEL_ID in line)


def test_openai_embeddings_carry_meaning(served: Server) -> None:
    got = served.client().embeddings.create(model=MODEL_ID, input=[CAT, KITTEN, MARKET])
    cat, kitten, market = (d.embedding for d in got.data)
    assert len(cat) == 384  # the model's width: the engine pooled, not one vector per token
    assert cosine(cat, kitten) > cosine(cat, market) + 0.2
    assert got.usage.prompt_tokens > 10


def test_the_engine_runs_in_embedding_mode_with_the_models_pooling(served: Server) -> None:
    served.client().embeddings.create(model=MODEL_ID, input="warm up")
    argv = Path(f"/proc/{served.engine_pid(MODEL_ID)}/cmdline").read_bytes().split(b"\0")
    assert b"--embeddings" in argv and b"--reranking" not in argv
    assert b"--pooling" not in argv  # the GGUF says mean: the engine reads it there


def test_ollama_client_embeds_with_an_embedding_model(served: Server) -> None:
    with ollama.Client(host=served.url) as client:
        emb = client.embed(model=MODEL_ID, input=[CAT, KITTEN, MARKET])
        cat, kitten, market = emb.embeddings
        assert len(cat) == 384 and cosine(cat, kitten) > cosine(cat, market) + 0.2
        assert emb.prompt_eval_count and emb.prompt_eval_count > 10
        old = client.embeddings(model=f"{MODEL_ID}:latest", prompt=CAT)
        assert cosine(list(old.embedding), list(cat)) > 0.999
        shown = client.show(MODEL_ID)
        assert shown.capabilities == ["embedding"]


def test_chat_with_an_embedding_model_is_refused_clearly(served: Server) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        served.client().chat.completions.create(
            model=MODEL_ID, messages=[{"role": "user", "content": "Hi"}], max_tokens=4
        )
    assert "embedding" in str(caught.value)
    with ollama.Client(host=served.url) as client, pytest.raises(ollama.ResponseError) as err:
        client.chat(model=MODEL_ID, messages=[{"role": "user", "content": "Hi"}])
    assert err.value.status_code == 400 and "embedding" in err.value.error


def test_a_reranker_runs_in_rank_mode_and_scores_every_document(served: Server) -> None:
    docs = [CAT, KITTEN, MARKET]
    body = {"model": RANKER_ID, "query": "cats", "documents": docs, "top_n": 3}
    got = requests.post(f"{served.url}/v1/rerank", json=body, timeout=60)
    assert got.status_code == 200, got.text
    results = got.json()["results"]
    assert sorted(r["index"] for r in results) == [0, 1, 2]
    assert all(isinstance(r["relevance_score"], float) for r in results)
    argv = Path(f"/proc/{served.engine_pid(RANKER_ID)}/cmdline").read_bytes().split(b"\0")
    assert b"--reranking" in argv


@pytest.mark.parametrize(
    ("path", "model", "body", "said"),
    [
        ("/v1/rerank", MODEL_ID, {"query": "q", "documents": ["d"]}, "embedding model"),
        ("/v1/embeddings", RANKER_ID, {"input": "x"}, "rerank model"),
        ("/api/embed", RANKER_ID, {"input": "x"}, "rerank model"),
        ("/v1/messages", MODEL_ID, {"messages": [], "max_tokens": 4}, "embedding model"),
    ],
)
def test_a_task_the_model_cannot_do_is_a_400_in_the_routes_dialect(
    served: Server, path: str, model: str, body: dict[str, object], said: str
) -> None:
    got = requests.post(f"{served.url}{path}", json={"model": model, **body}, timeout=30)
    assert got.status_code == 400, got.text
    error = got.json()["error"]
    message = error if isinstance(error, str) else error["message"]  # Ollama's: a string
    assert said in message
    if path == "/v1/messages":
        assert got.json()["type"] == "error" and error["type"] == "invalid_request_error"
