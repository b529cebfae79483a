"""The server under fuzzing (issue 18): every operation of its OpenAPI schema, bodies that
fit and bodies that break it, against the real engine: no unintended 5xx, and the server
still chats afterwards. About 1,000 requests here; `bench/fuzz.py` runs 10,000."""

from __future__ import annotations

from pathlib import Path

from conftest import SLOWDOWN, STARTER_ID, link_models, start_server
from fuzz import SERVER_ENV, fuzz_then_chat
from offgrid.engine.build import EngineBinary


def test_fuzzing_every_route_finds_no_server_error(
    tmp_path: Path, model_store: Path, engine_binary: EngineBinary
) -> None:
    models = link_models(model_store, tmp_path / "m", {f"{STARTER_ID}.gguf": f"{STARTER_ID}.gguf"})
    srv = start_server(tmp_path, models, engine_binary, **SERVER_ENV)
    try:
        # about 1,100 requests; fewer on a busy machine, where each takes longer (the suite
        # must stay under 15 minutes there too), never under about 500
        examples = max(9, round(20 / SLOWDOWN))
        report, chats = fuzz_then_chat(srv, STARTER_ID, per_operation=examples)
        print(report.summary())
        assert report.requests >= 1000 * examples / 20
        assert report.server_errors == [], "\n".join(report.server_errors[:20])
        assert chats
    finally:
        srv.stop()
