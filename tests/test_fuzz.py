"""The server under fuzzing (issue 18): every operation of its OpenAPI schema, bodies that
fit and bodies that break it, against the real engine: no unintended 5xx, and the server
still chats afterwards. About 1,000 requests here; `bench/fuzz.py` runs 10,000."""

from __future__ import annotations

from pathlib import Path

from conftest import STARTER_ID, link_models, start_server
from fuzz import fuzz
from offgrid.engine.build import EngineBinary

# What a fuzzer must not do to the shared machine: remove the model it fuzzes with, or
# stop the server (a pull would only reach the unreachable Hub, and is fuzzed)
SKIP = ("DELETE /api/models/{model_id}", "DELETE /api/delete")


def test_fuzzing_every_route_finds_no_server_error(
    tmp_path: Path, model_store: Path, engine_binary: EngineBinary
) -> None:
    models = link_models(model_store, tmp_path / "m", {f"{STARTER_ID}.gguf": f"{STARTER_ID}.gguf"})
    srv = start_server(
        tmp_path,
        models,
        engine_binary,
        OFFGRID_MAX_CONTEXT="128",  # generations stay short whatever max_tokens says
        HF_ENDPOINT="http://127.0.0.1:9",  # the Hub cannot be reached: 503, as meant
    )
    try:
        report = fuzz(srv.url, per_operation=20, models=[STARTER_ID], skip=SKIP)
        print(report.summary())
        assert report.requests >= 1000
        assert report.server_errors == [], "\n".join(report.server_errors[:20])
        chat = srv.client().chat.completions.create(
            model=STARTER_ID, messages=[{"role": "user", "content": "Hi"}], max_tokens=4
        )
        assert chat.choices[0].message.content is not None
    finally:
        srv.stop()
