"""Logs for operators (issue 15): one line per request with its route, model, status,
tokens and time, as JSON for collectors; the prompt only when asked for."""

from __future__ import annotations

import json
from pathlib import Path

import requests

from conftest import FAKE_ENGINE, STARTER_ID, link_models, start_server
from offgrid.engine.build import EngineBinary

SECRET = "zebra-umbrella-42"


def chat_and_read_log(tmp_path: Path, model_store: Path, **env: str) -> str:
    models = link_models(model_store, tmp_path / "m", {f"{STARTER_ID}.gguf": f"{STARTER_ID}.gguf"})
    fake = EngineBinary(Path(FAKE_ENGINE), "cpu", "test")
    srv = start_server(tmp_path, models, fake, OFFGRID_LLAMA_SERVER=FAKE_ENGINE, **env)
    try:
        body = {"model": STARTER_ID, "messages": [{"role": "user", "content": SECRET}]}
        assert requests.post(f"{srv.url}/v1/chat/completions", json=body, timeout=30).ok
        assert requests.get(f"{srv.url}/api/ps", timeout=10).ok
    finally:
        srv.stop()
    return srv.log.read_text()


def test_each_request_is_one_json_line_and_no_prompt(tmp_path: Path, model_store: Path) -> None:
    text = chat_and_read_log(tmp_path, model_store, OFFGRID_LOG_FORMAT="json")
    lines = [json.loads(ln) for ln in text.splitlines() if ln.startswith("{")]
    access = [ln for ln in lines if ln["logger"] == "offgrid.access"]
    chat = next(ln for ln in access if ln["route"] == "/v1/chat/completions")
    assert chat["method"] == "POST" and chat["status"] == 200 and chat["model"] == STARTER_ID
    assert chat["completion_tokens"] == 16 and chat["prompt_tokens"] == 1 and chat["ms"] > 0
    assert any(ln["route"] == "/api/ps" and ln["status"] == 200 for ln in access)
    assert SECRET not in text


def test_prompts_are_logged_only_when_asked(tmp_path: Path, model_store: Path) -> None:
    assert SECRET in chat_and_read_log(tmp_path, model_store, OFFGRID_LOG_PROMPTS="1")
