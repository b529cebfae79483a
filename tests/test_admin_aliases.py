"""Admin routes take a model's alias wherever they take its id (issue 14: `remove` and
`unload` by alias did not resolve it)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from conftest import STARTER_ID, fake_engine_settings, link_models, serve_in_thread

ALIAS = "gpt-4o-mini"


@pytest.fixture
def url(tmp_path: Path, model_store: Path) -> Iterator[str]:
    models = link_models(model_store, tmp_path / "m", {f"{STARTER_ID}.gguf": f"{STARTER_ID}.gguf"})
    settings = fake_engine_settings(tmp_path, models, OFFGRID_MODEL_ALIASES=f"{ALIAS}={STARTER_ID}")
    with serve_in_thread(settings) as base:
        yield base


def loaded(url: str) -> list[str]:
    return [m["id"] for m in requests.get(f"{url}/api/ps", timeout=10).json()["models"]]


def test_unload_by_alias_stops_the_model(url: str) -> None:
    assert requests.post(f"{url}/api/models/{ALIAS}/load", timeout=30).status_code == 200
    assert loaded(url) == [STARTER_ID]
    r = requests.post(f"{url}/api/models/{ALIAS}/unload", timeout=30)
    assert r.status_code == 200 and r.json()["unloaded"] is True, r.text
    assert loaded(url) == []


def test_remove_by_alias_removes_the_model(url: str) -> None:
    r = requests.delete(f"{url}/api/models/{ALIAS}", timeout=30)
    assert r.status_code == 200, r.text
    ids = [m["id"] for m in requests.get(f"{url}/api/models", timeout=10).json()["models"]]
    assert STARTER_ID not in ids


def test_remove_by_alias_of_a_loaded_model_is_refused_without_force(url: str) -> None:
    assert requests.post(f"{url}/api/models/{ALIAS}/load", timeout=30).status_code == 200
    r = requests.delete(f"{url}/api/models/{ALIAS}", timeout=30)
    assert r.status_code == 409, r.text
    r = requests.delete(f"{url}/api/models/{ALIAS}", params={"force": True}, timeout=30)
    assert r.status_code == 200, r.text
    assert loaded(url) == []
