"""API keys (issue 15): once a key exists every API route needs one; read-only keys cannot
administer; keys are stored only as hashes. Driven with the official `openai` client against
the app with the fake engine (the check is the same for every route and engine)."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import requests

from conftest import REAL_ENV, STARTER_ID, fake_engine_settings, link_models, serve_in_thread
from offgrid.auth.keys import KeyStore
from offgrid.engine.process import free_port

HELLO = [{"role": "user", "content": "Hi"}]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def url(tmp_path: Path, model_store: Path, data_dir: Path) -> Iterator[str]:
    models = link_models(model_store, tmp_path / "m", {f"{STARTER_ID}.gguf": f"{STARTER_ID}.gguf"})
    settings = fake_engine_settings(tmp_path, models, OFFGRID_DATA_DIR=str(data_dir))
    with serve_in_thread(settings) as base:
        yield base


def client(url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)


def chat(url: str, key: str | None) -> str:
    """One chat through the official client; ``key=None`` sends no Authorization at all."""
    no_auth = {"Authorization": openai.omit} if key is None else None
    with client(url, key or "-") as c:
        reply = c.chat.completions.create(
            model=STARTER_ID,
            messages=HELLO,  # type: ignore[arg-type]
            max_tokens=2,
            extra_headers=no_auth,  # type: ignore[arg-type]
        )
        return reply.choices[0].message.content or ""


def test_without_keys_the_api_stays_open(url: str) -> None:
    assert chat(url, "not-needed")


def test_keys_guard_every_api_route(url: str, data_dir: Path) -> None:
    store = KeyStore(data_dir / "api-keys.json")
    admin = store.create("ops")
    reader = store.create("app", "read")
    for bad in (None, "og-wrong", admin + "x"):
        with pytest.raises(openai.AuthenticationError) as err:
            chat(url, bad)
        body = err.value.body
        assert isinstance(body, dict) and body["code"] == "invalid_api_key", body
        assert err.value.response.headers["www-authenticate"] == "Bearer"
    assert chat(url, admin) and chat(url, reader)
    with client(url, reader) as c:  # streaming too
        pieces = list(c.chat.completions.create(model=STARTER_ID, messages=HELLO, stream=True))  # type: ignore[arg-type]
        assert pieces
        assert [m.id for m in c.models.list()] == [STARTER_ID]
    store.revoke("app")  # takes effect at once, no restart
    with pytest.raises(openai.AuthenticationError):
        chat(url, reader)


def test_a_read_only_key_cannot_administer(url: str, data_dir: Path) -> None:
    store = KeyStore(data_dir / "api-keys.json")
    admin, reader = store.create("ops"), store.create("app", "read")
    load = f"{url}/api/models/{STARTER_ID}/load"
    r = requests.post(load, headers={"Authorization": f"Bearer {reader}"}, timeout=30)
    assert r.status_code == 403 and r.json()["error"]["code"] == "permission_denied", r.text
    assert requests.get(f"{url}/api/ps", headers={"x-api-key": reader}, timeout=10).ok
    r = requests.post(load, headers={"x-api-key": admin}, timeout=30)  # as Anthropic's clients
    assert r.status_code == 200, r.text


def test_probes_and_the_dashboard_page_stay_open_metrics_do_not(url: str, data_dir: Path) -> None:
    KeyStore(data_dir / "api-keys.json").create("ops")
    for path in ("/health", "/livez", "/ui", "/ui/static/app.js"):
        assert requests.get(url + path, timeout=10).status_code == 200, path
    assert requests.get(url + "/readyz", timeout=10).status_code == 200
    for path in ("/metrics", "/api/stats", "/api/models", "/openapi.json"):
        assert requests.get(url + path, timeout=10).status_code == 401, path


def test_keys_are_stored_only_as_hashes_readable_by_the_service_alone(data_dir: Path) -> None:
    store = KeyStore(data_dir / "api-keys.json")
    secret = store.create("ops", ttl=3600)
    text = (data_dir / "api-keys.json").read_text()
    assert secret not in text and secret[3:20] not in text
    assert stat.S_IMODE((data_dir / "api-keys.json").stat().st_mode) == 0o600
    [key] = json.loads(text)["keys"]
    assert key["scope"] == "admin" and key["expires_at"] > key["created_at"]
    assert store.check(secret) is not None and store.check(secret[:-1]) is None


def test_an_expired_key_is_refused(data_dir: Path) -> None:
    store = KeyStore(data_dir / "api-keys.json")
    secret = store.create("short", ttl=1e-6)
    assert store.check(secret) is None


def test_serving_beyond_loopback_without_a_key_is_refused(tmp_path: Path) -> None:
    env = {
        **REAL_ENV,
        "HOME": str(tmp_path),
        "OFFGRID_DATA_DIR": str(tmp_path / "data"),
        "OFFGRID_HOST": "0.0.0.0",
        "OFFGRID_PORT": str(free_port()),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "offgrid", "serve"], env=env, capture_output=True, timeout=60
    )
    assert proc.returncode != 0
    assert b"offgrid keys create" in proc.stderr and b"--insecure-no-auth" in proc.stderr


def test_a_lan_server_whose_last_key_is_revoked_refuses_everyone(
    tmp_path: Path, model_store: Path, data_dir: Path
) -> None:
    """Revoking the last key (or losing the file) must not open a server bound beyond
    loopback: it refuses until a key exists again (found in review)."""
    models = link_models(model_store, tmp_path / "m", {f"{STARTER_ID}.gguf": f"{STARTER_ID}.gguf"})
    store = KeyStore(data_dir / "api-keys.json")
    key = store.create("only")
    settings = fake_engine_settings(
        tmp_path, models, OFFGRID_DATA_DIR=str(data_dir), OFFGRID_HOST="0.0.0.0"
    )
    with serve_in_thread(settings) as url:
        assert requests.get(f"{url}/v1/models", headers={"x-api-key": key}, timeout=10).ok
        store.revoke("only")
        r = requests.get(f"{url}/v1/models", timeout=10)
        assert r.status_code == 401 and "offgrid keys create" in r.json()["error"]["message"]
        (data_dir / "api-keys.json").unlink()
        assert requests.get(f"{url}/v1/models", timeout=10).status_code == 401
        assert requests.get(f"{url}/health", timeout=10).ok


def test_a_damaged_keys_file_refuses_in_openai_shape(url: str, data_dir: Path) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "api-keys.json").write_text('{"keys": [{"id": 1}]}')
    r = requests.get(f"{url}/v1/models", timeout=10)
    assert r.status_code == 500 and "api-keys.json" in r.json()["error"]["message"]


def test_keys_made_at_once_are_all_kept(data_dir: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    store = KeyStore(data_dir / "api-keys.json")
    with ThreadPoolExecutor(8) as pool:
        secrets = list(pool.map(lambda i: store.create(f"k{i}"), range(8)))
    kept = KeyStore(data_dir / "api-keys.json").keys()  # read afresh from the file
    assert sorted(k.name for k in kept) == [f"k{i}" for i in range(8)]
    assert all(store.check(s) is not None for s in secrets)
