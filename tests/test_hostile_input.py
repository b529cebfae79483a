"""Hostile and malformed input is the client's mistake: a 4xx that says what is wrong, in
the route's dialect, never a 500 (issue 18). Against the fake engine: what is checked here
is OffGrid's own validation, before any engine sees the request."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from conftest import STARTER_ID, fake_engine_settings, link_models, serve_in_thread, wait_for


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("hostile")
    (tmp / "m").mkdir()
    # a Hub that cannot be reached: nothing here may even try when the input is bad
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
        with serve_in_thread(fake_engine_settings(tmp, tmp / "m")) as served:
            yield served


@pytest.mark.parametrize(
    "repo", ["\x00", "a/b\nc", "../../etc", "a/../b", "owner", "a/b/c", "a--b/c", "x/" + "y" * 100]
)
def test_a_name_that_is_no_hub_repository_is_a_400(url: str, repo: str) -> None:
    got = requests.post(url + "/api/pulls", json={"repo": repo, "quant": "Q4_K_M"}, timeout=30)
    assert got.status_code == 400, got.text
    assert "repository id" in got.json()["error"]["message"]
    ollama = requests.post(url + "/api/pull", json={"model": f"hf.co/{repo}:Q4_K_M"}, timeout=30)
    assert ollama.status_code in (400, 404), ollama.text  # Ollama's: no such model
    assert "repositor" in ollama.json()["error"]


@pytest.mark.parametrize("rate", ["NUL", "12XB", -5, [], {"a": 1}, True, "inf", "nan", "1e400"])
def test_a_rate_that_is_no_size_is_a_400_naming_the_field(url: str, rate: object) -> None:
    got = requests.post(url + "/api/pulls", json={"repo": "a/b", "limit_rate": rate}, timeout=30)
    assert got.status_code == 400, got.text
    assert got.json()["error"]["param"] == "limit_rate"


def test_an_unreachable_hub_is_a_503_not_a_500(url: str) -> None:
    got = requests.post(url + "/api/pulls", json={"repo": "a/b", "quant": "Q4_K_M"}, timeout=30)
    assert got.status_code == 503 and got.json()["error"]["code"] == "unreachable"
    got = requests.get(url + "/api/hub/search", params={"q": "x", "limit": 0}, timeout=30)
    assert got.status_code == 400  # a limit out of range is refused before the Hub is asked


@pytest.mark.parametrize("keep_alive", ["soon", [], "5 parsecs", "inf", "nan"])
def test_a_keep_alive_that_is_no_duration_is_a_400(url: str, keep_alive: object) -> None:
    got = requests.post(
        url + "/api/models/anything/load", json={"keep_alive": keep_alive}, timeout=30
    )
    assert got.status_code == 400, got.text


@pytest.mark.parametrize(
    "body",
    [
        b'{"model": "m", "messages": [], "temperature": NaN}',
        b'{"model": "m", "messages": [], "top_p": Infinity}',
        b'{"model": "m", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b'{"model": "m", "messages": [}',
        b"[1, 2]",
        b'{"model": 7, "messages": []}',
    ],
)
def test_bodies_that_are_not_json_objects_are_400s(url: str, body: bytes) -> None:
    got = requests.post(
        url + "/v1/chat/completions",
        data=body,
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert got.status_code == 400, got.text
    assert got.json()["error"]["type"] == "invalid_request_error"


def test_headers_over_the_limit_are_refused_and_the_server_stays_up(url: str) -> None:
    got = requests.get(url + "/health", headers={"X-Big": "x" * 200_000}, timeout=30)
    assert got.status_code == 431 and "headers" in got.json()["error"]["message"]
    assert requests.get(url + "/health", timeout=10).status_code == 200


@pytest.fixture(scope="module")
def importing(
    tmp_path_factory: pytest.TempPathFactory, model_store: Path
) -> Iterator[tuple[Path, str]]:
    """A server whose drop folder holds the starter model: the folder and the server."""
    tmp = tmp_path_factory.mktemp("imports")
    drop = link_models(model_store, tmp / "drop", {f"{STARTER_ID}.gguf": f"{STARTER_ID}.gguf"})
    (tmp / "m").mkdir()
    settings = fake_engine_settings(tmp, tmp / "m", OFFGRID_IMPORT_DIRS=str(drop))
    with serve_in_thread(settings) as served:
        yield drop, served


@pytest.mark.parametrize("source", ["/", "/etc", "~", "drop/../..", "escape", "nul\x00"])
def test_an_import_reads_only_from_allowed_folders(
    importing: tuple[Path, str], source: str
) -> None:
    drop, url = importing
    (drop / "escape").unlink(missing_ok=True)
    (drop / "escape").symlink_to("/etc")  # a link inside that points out: refused too
    source = {"drop/../..": f"{drop}/../..", "escape": str(drop / "escape")}.get(source, source)
    started = time.monotonic()
    got = requests.post(url + "/api/models/import", json={"source": source}, timeout=30)
    if "\x00" in source:
        assert got.status_code == 400 and "not a usable path" in got.json()["error"]["message"]
    else:
        assert got.status_code == 403 and "imports only from" in got.json()["error"]["message"]
    assert time.monotonic() - started < 5  # refused, not walked


def test_an_import_runs_as_a_job_with_progress(importing: tuple[Path, str]) -> None:
    drop, url = importing
    order = {"source": str(drop / f"{STARTER_ID}.gguf"), "wait": False}
    got = requests.post(url + "/api/models/import", json=order, timeout=30)
    assert got.status_code == 202 and got.json()["status"] == "running"
    job = got.json()["id"]

    def ended() -> dict[str, object] | None:
        state = requests.get(f"{url}/api/imports/{job}", timeout=10).json()
        return state if state["status"] != "running" else None

    state = wait_for(ended, 60, "the import to end")
    assert state["status"] == "done" and state["total_bytes"] == state["done_bytes"] > 0
    assert [(r["model_id"], r["status"]) for r in state["results"]] == [(STARTER_ID, "imported")]
    assert job in {
        j["id"] for j in requests.get(f"{url}/api/imports", timeout=10).json()["imports"]
    }
    assert requests.get(f"{url}/api/imports/nope", timeout=10).status_code == 404


def test_a_link_inside_an_allowed_folder_that_points_out_is_refused(
    importing: tuple[Path, str], model_store: Path
) -> None:
    drop, url = importing
    folder = drop / "stick"
    folder.mkdir(exist_ok=True)
    (folder / "linked.gguf").unlink(missing_ok=True)
    (folder / "linked.gguf").symlink_to(model_store / f"{STARTER_ID}.gguf")
    got = requests.post(url + "/api/models/import", json={"source": str(folder)}, timeout=60)
    assert got.status_code == 200, got.text
    [result] = got.json()["results"]
    assert result["status"] == "refused" and "outside" in result["detail"], result


def test_a_keep_alive_that_is_not_finite_is_a_400_on_the_inference_routes(url: str) -> None:
    for keep_alive in ('"inf"', '"nan"', "1e400"):  # the last: a number JSON allows
        body = f'{{"model": "m", "messages": [], "keep_alive": {keep_alive}}}'
        got = requests.post(
            url + "/v1/chat/completions",
            data=body,
            headers={"Content-Type": "application/json"},
            timeout=30,
        )
        assert got.status_code == 400 and got.json()["error"]["param"] == "keep_alive"
