"""The running server and the model folders: hot reload, integrity on load, removal (issue 5)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import requests

from conftest import STARTER_ID, Server, link_models, start_server, wait_for
from offgrid.config import load_settings
from offgrid.engine.build import EngineBinary
from offgrid.models.registry import Registry
from offgrid.models.starter import GEMMA, STARTER


@pytest.fixture
def served(tmp_path: Path, engine_binary: EngineBinary, model_store: Path) -> Iterator[Server]:
    (tmp_path / "home").mkdir(exist_ok=True)
    models = link_models(model_store, tmp_path / "models", {STARTER.file_name: STARTER.file_name})
    srv = start_server(tmp_path, models, engine_binary, OFFGRID_KEEP_ALIVE="-1")
    yield srv
    srv.stop()


def listed(server: Server) -> list[str]:
    data = requests.get(f"{server.url}/v1/models", timeout=10).json()["data"]
    return [m["id"] for m in data]


def chat(server: Server, model: str) -> requests.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    return requests.post(f"{server.url}/v1/chat/completions", json=body, timeout=120)


def test_a_model_copied_in_appears_only_once_whole_and_within_2_s(
    served: Server, model_store: Path
) -> None:
    models = Path(served.env["OFFGRID_MODELS_DIR"])
    data = (model_store / GEMMA.file_name).read_bytes()
    with (models / "arriving.gguf").open("wb") as fh:
        fh.write(data[: len(data) // 2])
        fh.flush()
        assert "arriving" not in listed(served)  # half a model is not a model
        fh.write(data[len(data) // 2 :])
    written = time.monotonic()
    wait_for(lambda: "arriving" in listed(served), 2, "the new model in /v1/models")
    assert time.monotonic() - written < 2
    assert chat(served, "arriving").status_code == 200


def test_a_loaded_model_whose_file_is_removed_is_unloaded(served: Server) -> None:
    assert chat(served, STARTER_ID).status_code == 200
    pid = served.engine_pid(STARTER_ID)
    (Path(served.env["OFFGRID_MODELS_DIR"]) / STARTER.file_name).unlink()
    removed = time.monotonic()
    wait_for(lambda: STARTER_ID not in listed(served), 2, "the model to leave /v1/models")
    wait_for(lambda: not served.ps(), 2, "the engine to be unloaded")
    assert time.monotonic() - removed < 2
    wait_for(lambda: not psutil.pid_exists(pid), 10, "the engine process to end")
    assert chat(served, STARTER_ID).status_code == 404


def test_the_server_refuses_a_model_whose_file_changed_since_import(
    served: Server, model_store: Path
) -> None:
    models = Path(served.env["OFFGRID_MODELS_DIR"])
    registry = Registry.for_settings(load_settings(served.env))
    shutil.copy(model_store / STARTER.file_name, models / "checked.gguf")
    registry.record(models / "checked.gguf", STARTER.sha256)
    with (models / "checked.gguf").open("r+b") as fh:  # one byte of the weights changes
        fh.seek(-100, os.SEEK_END)
        byte = fh.read(1)[0]
        fh.seek(-1, os.SEEK_CUR)
        fh.write(bytes([byte ^ 0xFF]))
    resp = chat(served, "checked")
    assert resp.status_code == 409
    error = resp.json()["error"]
    assert error["code"] == "integrity_check_failed"
    assert "offgrid verify --accept checked" in error["message"]
    assert not any(m["id"] == "checked" for m in served.ps())
    registry.verify(["checked"], accept=True)
    assert chat(served, "checked").status_code == 200


def test_remove_refuses_a_loaded_model_unless_forced(served: Server) -> None:
    assert chat(served, STARTER_ID).status_code == 200
    pid = served.engine_pid(STARTER_ID)
    models = requests.get(f"{served.url}/api/models", timeout=10).json()["models"]
    assert [(m["id"], m["loaded"]) for m in models] == [(STARTER_ID, True)]
    cli = [sys.executable, "-m", "offgrid", "remove", STARTER_ID]
    refused = subprocess.run(cli, env=served.env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and "is loaded" in refused.stderr
    assert (Path(served.env["OFFGRID_MODELS_DIR"]) / STARTER.file_name).exists()
    forced = subprocess.run(
        [*cli, "--force"], env=served.env, capture_output=True, text=True, timeout=60
    )
    assert forced.returncode == 0, forced.stderr
    assert not (Path(served.env["OFFGRID_MODELS_DIR"]) / STARTER.file_name).exists()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert listed(served) == []


def test_models_api_shows_details_and_imports_from_a_path(
    served: Server, model_store: Path, tmp_path: Path
) -> None:
    details = requests.get(f"{served.url}/api/models/{STARTER_ID}", timeout=60).json()
    assert details["sha256"] is None and details["memory"]["cpu_ram_bytes"] > 0  # not hashed yet
    checks = requests.post(f"{served.url}/api/models/verify", json={}, timeout=60).json()
    assert [(c["model_id"], c["status"]) for c in checks["checks"]] == [(STARTER_ID, "OK")]
    details = requests.get(f"{served.url}/api/models/{STARTER_ID}", timeout=60).json()
    assert details["sha256"] == STARTER.sha256
    outside = {"source": str(model_store / GEMMA.file_name)}
    refused = requests.post(f"{served.url}/api/models/import", json=outside, timeout=60)
    assert refused.status_code == 403 and "imports only from" in refused.text
    drop = Path(served.env["HOME"]) / ".local" / "share" / "offgrid" / "import"  # the default
    link_models(model_store, drop, {GEMMA.file_name: GEMMA.file_name})
    resp = requests.post(
        f"{served.url}/api/models/import",
        json={"source": str(drop / GEMMA.file_name)},
        timeout=120,
    )
    assert resp.status_code == 200, resp.text
    [result] = resp.json()["results"]
    assert (result["model_id"], result["status"]) == (GEMMA.model_id, "imported")
    assert GEMMA.model_id in listed(served)
    bad = requests.get(f"{served.url}/api/models/..%2F..%2Fetc%2Fpasswd", timeout=10)
    assert bad.status_code == 404
