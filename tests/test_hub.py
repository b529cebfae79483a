"""Getting models from the HuggingFace Hub: search, catalog, resumable verified downloads.

The Hub is served by ``fake_hub.FakeHub`` on loopback from real GGUF files (the starter
model, Gemma, a split copy of the starter, small built ones); ``huggingface_hub`` and the
downloader reach it through ``HF_ENDPOINT``, as they would reach a mirror.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
import requests
from gguf.scripts.gguf_new_metadata import copy_with_new_metadata

from conftest import STARTER_ID, Server, link_models, start_server, wait_for
from fake_hub import FakeHub
from offgrid.engine.build import EngineBinary
from offgrid.errors import IntegrityError, UnreachableError
from offgrid.hub import client
from offgrid.hub.download import fetch_model
from offgrid.models.registry import Registry
from offgrid.models.starter import GEMMA, STARTER

OFFGRID = [sys.executable, "-m", "offgrid"]
SMOL = STARTER.file_name
TOKEN = "hf_secret_test_token_123"
IN_FLIGHT = 16 * 1024 * 1024  # a chunk in memory, and what the sockets' buffers held


def big_gguf(path: Path, mib: int, seed: int = 0) -> Path:
    """A valid GGUF file of about ``mib`` MiB."""
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(256)
    w.add_block_count(1)
    rng = np.random.default_rng(seed)
    w.add_tensor("token_embd.weight", rng.standard_normal((mib * 256, 1024), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="session")
def split_smol(model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The starter model split in two parts, as llama.cpp's tools split large models."""
    out = tmp_path_factory.mktemp("split") / "smol-split-Q4_1.gguf"
    reader = gguf.GGUFReader(model_store / SMOL)
    writer = gguf.GGUFWriter(
        out, reader.fields["general.architecture"].contents(), split_max_size=60_000_000
    )
    copy_with_new_metadata(reader, writer, {}, [])
    return sorted(out.parent.glob("smol-split-Q4_1-*.gguf"))


@pytest.fixture
def hub(
    model_store: Path, split_smol: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[FakeHub]:
    """A local Hub with GGUF repositories, reached through HF_ENDPOINT."""
    small = tmp_path / "hubfiles"
    small.mkdir()
    with FakeHub(token=TOKEN) as fake:
        fake.add(
            "tester/SmolLM2-135M-Instruct-GGUF",
            {SMOL: model_store / SMOL},
            downloads=500,
            likes=5,
            last_modified="2025-01-01T00:00:00.000Z",
        )
        fake.add(
            "tester/gemma-3-270m-it-GGUF",
            {GEMMA.file_name: model_store / GEMMA.file_name},
            downloads=50,
            likes=90,
            last_modified="2026-06-01T00:00:00.000Z",
        )
        fake.add(
            "tester/tiny-llama-GGUF",
            {
                "tiny-llama-Q4_K_M.gguf": big_gguf(small / "a.gguf", 2, seed=1),
                "tiny-llama-Q8_0.gguf": big_gguf(small / "b.gguf", 2, seed=2),
                "Q5_K_M/tiny-llama-Q5_K_M.gguf": big_gguf(small / "c.gguf", 2, seed=3),
            },
            downloads=100,
            likes=1,
            last_modified="2026-10-01T00:00:00.000Z",
        )
        fake.add(
            "tester/smol-split-GGUF",
            {f"Q4_1/{p.name}": p for p in split_smol},
            downloads=5,
        )
        fake.add("tester/not-gguf", {}, downloads=10_000, tags=["pytorch"])
        fake.add("tester/gated-GGUF", {"gated-Q4_0.gguf": small / "a.gguf"}, gated=True)
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        for var in ("HF_TOKEN", "HF_HUB_OFFLINE", "HUGGING_FACE_HUB_TOKEN"):
            monkeypatch.delenv(var, raising=False)
        yield fake


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    reg = Registry([tmp_path / "models"], tmp_path / "data" / "registry.sqlite")
    yield reg
    reg.close()


def cli(*args: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full = {
        **os.environ,
        "OFFGRID_MODELS_DIR": str(tmp_path / "models"),
        "OFFGRID_DATA_DIR": str(tmp_path / "data"),
        "COLUMNS": "250",
        **env,
    }
    return subprocess.run([*OFFGRID, *args], env=full, capture_output=True, text=True, timeout=120)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- search ---------------------------------------------------------------------------
def test_search_filters_by_quant_and_sorts(hub: FakeHub) -> None:
    hits = client.search("", sort="downloads")
    assert [h.repo for h in hits] == [
        "tester/SmolLM2-135M-Instruct-GGUF",
        "tester/tiny-llama-GGUF",
        "tester/gemma-3-270m-it-GGUF",
        "tester/smol-split-GGUF",
        "tester/gated-GGUF",
    ][: len(hits)]
    assert "tester/not-gguf" not in {h.repo for h in hits}
    assert [h.repo for h in client.search("", sort="likes")][:2] == [
        "tester/gemma-3-270m-it-GGUF",
        "tester/SmolLM2-135M-Instruct-GGUF",
    ]
    assert client.search("", sort="updated")[0].repo == "tester/tiny-llama-GGUF"

    (hit,) = client.search("tiny", quant="q8_0")
    (model,) = hit.models
    assert model.quant == "Q8_0" and model.files[0].name == "tiny-llama-Q8_0.gguf"
    assert model.size == (hub.repos[hit.repo].files["tiny-llama-Q8_0.gguf"]).stat().st_size
    assert model.files[0].sha256 == sha256(hub.repos[hit.repo].files["tiny-llama-Q8_0.gguf"])
    (hit,) = client.search("tiny", quant="Q5_K_M")
    assert hit.models[0].files[0].name == "Q5_K_M/tiny-llama-Q5_K_M.gguf"

    (split,) = client.search("split")
    (model,) = split.models  # two parts, one model
    assert model.model_id == "smol-split-Q4_1" and len(model.files) == 2
    assert model.size == sum(p.stat().st_size for p in hub.repos[split.repo].files.values())


def test_search_command_shows_sizes_and_fit(hub: FakeHub, tmp_path: Path) -> None:
    out = cli("search", "smol", "--quant", "Q4_1", tmp_path=tmp_path)
    assert out.returncode == 0, out.stderr
    line = next(x for x in out.stdout.splitlines() if x.startswith("tester/SmolLM2"))
    assert SMOL in line and "Q4_1" in line and "98.4 MB" in line and " yes " in line
    found = json.loads(cli("search", "smol", "--json", tmp_path=tmp_path).stdout)
    models = [m for hit in found for m in hit["models"]]
    assert {m["quantization"] for m in models} == {"Q4_1"}
    assert all(m["fits"] is True and m["ram_needed"] > m["size"] for m in models)


# -- downloads ------------------------------------------------------------------------
def test_download_verifies_registers_and_second_is_a_no_op(hub: FakeHub, tmp_path: Path) -> None:
    repo = "tester/SmolLM2-135M-Instruct-GGUF"
    out = cli("download-hf", repo, "--file", SMOL, tmp_path=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "sha256 verified" in out.stdout
    target = tmp_path / "models" / SMOL
    assert sha256(target) == STARTER.sha256
    assert hub.served[SMOL] == STARTER.size
    shown = json.loads(cli("show", STARTER_ID, "--json", tmp_path=tmp_path).stdout)
    assert shown["sha256"] == STARTER.sha256
    assert shown["origin"] == {
        "kind": "huggingface",
        "repo": repo,
        "revision": shown["origin"]["revision"],
        "file": SMOL,
    }
    assert len(shown["origin"]["revision"]) == 40
    again = cli("download-hf", repo, "--quant", "q4_1", tmp_path=tmp_path)
    assert again.returncode == 0 and "already installed" in again.stdout
    assert hub.served[SMOL] == STARTER.size  # not one byte more
    assert [p.name for p in (tmp_path / "models").iterdir()] == [SMOL]


def test_download_needs_a_choice_when_a_repo_has_several_files(
    hub: FakeHub, tmp_path: Path
) -> None:
    out = cli("download-hf", "tester/tiny-llama-GGUF", tmp_path=tmp_path)
    assert out.returncode == 1
    assert "--file or --quant" in out.stderr and "tiny-llama-Q8_0.gguf" in out.stderr
    out = cli("download-hf", "tester/tiny-llama-GGUF", "--quant", "Q2_K", tmp_path=tmp_path)
    assert out.returncode == 1 and "no quantization Q2_K" in out.stderr
    out = cli("download-hf", "tester/nope-GGUF", tmp_path=tmp_path)
    assert out.returncode == 1 and "no such repository" in out.stderr
    assert hub.served == {}


def test_cut_transfer_resumes_and_fetches_only_the_rest(hub: FakeHub, registry: Registry) -> None:
    (remote,) = client.repo_models("tester/SmolLM2-135M-Instruct-GGUF")
    half = STARTER.size // 2
    hub.cut_after[SMOL] = half
    notes: list[str] = []
    assert fetch_model(remote, registry, notes=notes.append) is True
    assert hub.served[SMOL] == STARTER.size  # every byte once: nothing fetched twice
    ranges = [r["range"] for r in hub.requests if r["path"].endswith(SMOL)]
    assert ranges == [None, f"bytes={half}-"]
    assert any("resuming" in n for n in notes)
    assert sha256(registry.models_dir / SMOL) == STARTER.sha256
    assert registry.get(STARTER_ID).sha256 == STARTER.sha256


def test_broken_download_resumes_in_the_next_run(hub: FakeHub, registry: Registry) -> None:
    (remote,) = client.repo_models("tester/SmolLM2-135M-Instruct-GGUF")
    cut = STARTER.size // 3
    hub.cut_after[SMOL] = cut
    hub.down_after_cut = True
    with pytest.raises(UnreachableError, match="run the same command again to resume"):
        fetch_model(remote, registry, retries=0)
    (partial,) = list(registry.models_dir.iterdir())
    assert partial.name.startswith(".") and partial.stat().st_size == cut
    assert registry.list() == []  # a partial file is no model

    hub.down = False
    assert fetch_model(remote, registry) is True
    assert hub.served[SMOL] == STARTER.size
    assert [p.name for p in registry.models_dir.iterdir()] == [SMOL]
    assert sha256(registry.models_dir / SMOL) == STARTER.sha256


def test_killed_download_resumes(hub: FakeHub, tmp_path: Path) -> None:
    """SIGKILL in the middle (no clean-up runs), then the same command again."""
    hub.rate = 20_000_000  # about 5 s for the file: time to kill it halfway
    env = {
        **os.environ,
        "OFFGRID_MODELS_DIR": str(tmp_path / "models"),
        "OFFGRID_DATA_DIR": str(tmp_path / "data"),
    }
    proc = subprocess.Popen(
        [*OFFGRID, "download-hf", "tester/SmolLM2-135M-Instruct-GGUF"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for(lambda: hub.served.get(SMOL, 0) > STARTER.size // 3, 60, "a third of the file")
    proc.kill()
    proc.wait()
    # the hub may write a block more before it sees the client gone: count after it has
    wait_for(lambda: hub.sending == 0, 30, "the hub to notice the client is gone")
    sent = hub.served[SMOL]
    hub.rate = None
    out = cli("download-hf", "tester/SmolLM2-135M-Instruct-GGUF", tmp_path=tmp_path)
    assert out.returncode == 0, out.stderr
    resumed_at = int(str(hub.requests[-1]["range"]).removeprefix("bytes=").rstrip("-"))
    assert sent - resumed_at <= IN_FLIGHT  # lost: what the killed process held, no more
    assert hub.served[SMOL] - STARTER.size == sent - resumed_at
    assert sha256(tmp_path / "models" / SMOL) == STARTER.sha256


def test_corrupted_file_is_refused_and_nothing_registered(
    hub: FakeHub, registry: Registry, tmp_path: Path
) -> None:
    hub.corrupt_at[SMOL] = STARTER.size // 2
    (remote,) = client.repo_models("tester/SmolLM2-135M-Instruct-GGUF")
    with pytest.raises(IntegrityError, match="arrived damaged"):
        fetch_model(remote, registry)
    assert list(registry.models_dir.iterdir()) == []  # no model, no partial file
    assert registry.list() == []
    out = cli("download-hf", "tester/SmolLM2-135M-Instruct-GGUF", tmp_path=tmp_path)
    assert out.returncode == 1
    assert "arrived damaged" in out.stderr and "Traceback" not in out.stderr
    assert cli("list", tmp_path=tmp_path).stdout.count("\n") <= 1


def test_split_model_downloads_as_one_and_serves(
    hub: FakeHub, tmp_path: Path, engine_binary: EngineBinary
) -> None:
    out = cli("download-hf", "tester/smol-split-GGUF", tmp_path=tmp_path)
    assert out.returncode == 0, out.stderr
    parts = sorted(p.name for p in (tmp_path / "models").iterdir())
    assert parts == ["smol-split-Q4_1-00001-of-00002.gguf", "smol-split-Q4_1-00002-of-00002.gguf"]
    listed = cli("list", tmp_path=tmp_path).stdout.splitlines()
    assert [x.split()[0] for x in listed[1:]] == ["smol-split-Q4_1"]
    assert (
        json.loads(cli("show", "smol-split-Q4_1", "--json", tmp_path=tmp_path).stdout)["parts"] == 2
    )

    srv = start_server(tmp_path, tmp_path / "models", engine_binary)
    try:
        reply = srv.client().chat.completions.create(
            model="smol-split-Q4_1", messages=[{"role": "user", "content": "Hi"}], max_tokens=4
        )
        assert reply.choices[0].message.content
    finally:
        srv.stop()
    assert "deleted" in cli("remove", "smol-split-Q4_1", tmp_path=tmp_path).stdout
    assert list((tmp_path / "models").iterdir()) == []


def test_rate_limit(hub: FakeHub, registry: Registry) -> None:
    (remote,) = [m for m in client.repo_models("tester/tiny-llama-GGUF") if m.quant == "Q4_K_M"]
    rate = remote.size // 2
    began = time.monotonic()
    fetch_model(remote, registry, rate=rate)
    assert time.monotonic() - began >= 1.5  # 2 s at that rate; never faster


def test_gated_repo_needs_a_token_which_is_never_shown(hub: FakeHub, tmp_path: Path) -> None:
    out = cli("download-hf", "tester/gated-GGUF", tmp_path=tmp_path)
    assert out.returncode == 1 and "HF_TOKEN" in out.stderr
    out = cli("download-hf", "tester/gated-GGUF", tmp_path=tmp_path, HF_TOKEN=TOKEN)
    assert out.returncode == 0, out.stderr
    assert TOKEN not in out.stdout + out.stderr
    assert (tmp_path / "models" / "gated-Q4_0.gguf").exists()
    assert any(r["auth"] == f"Bearer {TOKEN}" for r in hub.requests)


# -- offline --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args",
    [
        ("search", "llama"),
        ("download-hf", "tester/SmolLM2-135M-Instruct-GGUF"),
        ("download", "llama-3.2-1b-instruct"),
    ],
)
def test_offline_commands_say_so_in_one_line(args: tuple[str, ...], tmp_path: Path) -> None:
    began = time.monotonic()
    out = cli(*args, tmp_path=tmp_path, HF_ENDPOINT="http://127.0.0.1:9", COLUMNS="80")
    assert time.monotonic() - began < 15
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot be reached" in lines[0], out.stderr


# -- catalog and quantization ---------------------------------------------------------
def test_catalog_lists_models_with_sizes_hashes_and_fit(tmp_path: Path) -> None:
    entries = json.loads(cli("catalog", "--json", tmp_path=tmp_path).stdout)
    assert len(entries) >= 15
    for e in entries:
        assert e["license"] and e["good_for"] and e["kind"] in ("chat", "embedding")
        for q in e["quants"]:
            assert q["size"] > 0 and q["ram_needed"] > q["size"]
            assert all(len(f["sha256"]) == 64 for f in q["files"])
    table = cli("catalog", tmp_path=tmp_path).stdout
    assert "llama-3.2-1b-instruct" in table and "GOOD FOR" in table


def test_catalog_update_offline_and_download_by_name(hub: FakeHub, tmp_path: Path) -> None:
    smol = hub.repos["tester/SmolLM2-135M-Instruct-GGUF"]
    file = {"name": SMOL, "size": STARTER.size, "sha256": STARTER.sha256}
    entry = {
        "id": "smol",
        "name": "SmolLM2 135M",
        "parameters": "135M",
        "license": "apache-2.0",
        "context_length": 8192,
        "kind": "chat",
        "good_for": "tests",
        "default_quant": "Q4_1",
        "quants": {"Q4_1": {"repo": "tester/SmolLM2-135M-Instruct-GGUF", "files": [file]}},
    }
    doc = {"format": "offgrid-catalog", "version": 1, "models": [entry]}
    bad = dict(entry, id="smol-bad")
    bad["quants"] = {
        "Q4_1": {
            "repo": entry["quants"]["Q4_1"]["repo"],  # type: ignore[index]
            "files": [dict(file, sha256="0" * 64)],
        }
    }
    doc["models"].append(bad)
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(doc))
    assert cli("catalog", "--update", str(path), tmp_path=tmp_path).returncode == 0
    assert [e["id"] for e in json.loads(cli("catalog", "--json", tmp_path=tmp_path).stdout)] == [
        "smol",
        "smol-bad",
    ]
    out = cli("download", "smol-bad", tmp_path=tmp_path)
    assert out.returncode == 1 and "not the file the catalog vouches for" in out.stderr
    assert SMOL not in hub.served
    out = cli("download", "smol", "Q4_1", tmp_path=tmp_path)
    assert out.returncode == 0, out.stderr
    assert sha256(tmp_path / "models" / SMOL) == STARTER.sha256 == smol.digest(SMOL)

    path.write_text('{"format": "offgrid-catalog", "models": [{"id": "x"}]}')
    out = cli("catalog", "--update", str(path), tmp_path=tmp_path)
    assert out.returncode == 1 and "not a valid OffGrid catalog" in out.stderr
    assert len(json.loads(cli("catalog", "--json", tmp_path=tmp_path).stdout)) == 2  # kept


def test_quantization_guide_sizes_a_model(tmp_path: Path) -> None:
    out = cli("quantization", tmp_path=tmp_path).stdout
    assert "Q4_K_M" in out and "recommended" in out and "FITS" not in out
    out = cli("quantization", "7B", tmp_path=tmp_path).stdout
    q4 = next(x for x in out.splitlines() if x.startswith("Q4_K_M "))
    assert "4.3 GB" in q4  # 7e9 * 4.90 / 8
    assert "FITS" in out
    out = cli("quantization", "llama-3.2-1b-instruct", tmp_path=tmp_path)
    assert "1.24B parameters" in out.stdout
    out = cli("quantization", "no-such-thing", tmp_path=tmp_path)
    assert out.returncode == 1 and "size like 7B" in out.stderr


# -- the API --------------------------------------------------------------------------
def sse_states(resp: requests.Response) -> list[dict[str, object]]:
    return [json.loads(line[6:]) for line in resp.iter_lines() if line.startswith(b"data: ")]


@pytest.fixture
def hub_server(hub: FakeHub, tmp_path: Path, engine_binary: EngineBinary) -> Iterator[Server]:
    """A server with no model yet, whose Hub is the local one."""
    (tmp_path / "models").mkdir()
    srv = start_server(
        tmp_path,
        tmp_path / "models",
        engine_binary,
        OFFGRID_DATA_DIR=str(tmp_path / "data"),
        HF_ENDPOINT=hub.url,
    )
    yield srv
    srv.stop()


def test_pull_progress_events_arrive_in_order_and_end_final(
    hub: FakeHub, hub_server: Server
) -> None:
    srv = hub_server
    found = requests.get(
        f"{srv.url}/api/hub/search", params={"q": "smol", "quant": "Q4_1"}, timeout=30
    ).json()["results"]
    assert found[0]["repo"] == "tester/SmolLM2-135M-Instruct-GGUF"
    assert found[0]["models"][0]["fits"] is True

    hub.rate = 50_000_000  # two seconds: several progress events
    body = {"repo": "tester/SmolLM2-135M-Instruct-GGUF", "quant": "Q4_1"}
    with requests.post(f"{srv.url}/api/pulls", json=body, stream=True, timeout=60) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        states = sse_states(resp)
    statuses = [s["status"] for s in states]
    assert statuses[-1] == "done" and "downloading" in statuses
    assert all(s not in ("done", "failed") for s in statuses[:-1])
    done = [int(str(s["completed"])) for s in states]
    assert done == sorted(done) and done[-1] == STARTER.size
    assert len([s for s in states if s["status"] == "downloading"]) >= 3
    assert any(int(str(s["bytes_per_second"])) > 0 for s in states)

    pulls = requests.get(f"{srv.url}/api/pulls", timeout=10).json()["pulls"]
    assert [p["status"] for p in pulls] == ["done"]
    models = [m.id for m in srv.client().models.list()]
    assert STARTER_ID in models
    reply = srv.client().chat.completions.create(
        model=STARTER_ID, messages=[{"role": "user", "content": "Hi"}], max_tokens=4
    )
    assert reply.choices[0].message.content

    again = requests.post(f"{srv.url}/api/pulls", json=body, stream=True, timeout=60)
    assert [s["status"] for s in sse_states(again)][-1] == "present"

    missing = requests.post(f"{srv.url}/api/pulls", json={"repo": "tester/nope-GGUF"}, timeout=30)
    assert missing.status_code == 404
    assert "no such repository" in missing.json()["error"]["message"]


def test_pull_can_be_cancelled_and_resumed(
    hub: FakeHub, hub_server: Server, tmp_path: Path
) -> None:
    srv = hub_server
    hub.rate = 20_000_000
    body = {"repo": "tester/gemma-3-270m-it-GGUF", "stream": False}
    pull = requests.post(f"{srv.url}/api/pulls", json=body, timeout=30).json()
    assert pull["status"] in ("queued", "downloading")

    def state() -> dict[str, object]:
        got: dict[str, object] = requests.get(
            f"{srv.url}/api/pulls/{pull['id']}", timeout=10
        ).json()
        return got

    wait_for(lambda: int(str(state()["completed"])) > GEMMA.size // 4, 60, "a quarter")
    requests.delete(f"{srv.url}/api/pulls/{pull['id']}", timeout=10)
    wait_for(lambda: state()["status"] == "cancelled", 30, "the cancel")
    kept = hub.served[GEMMA.file_name]
    hub.rate = None
    with requests.get(f"{srv.url}/api/pulls/{pull['id']}/events", stream=True) as resp:
        assert [s["status"] for s in sse_states(resp)] == ["cancelled"]
    with requests.post(
        f"{srv.url}/api/pulls", json={**body, "stream": True}, stream=True, timeout=60
    ) as resp:
        assert sse_states(resp)[-1]["status"] == "done"
    resumed_at = int(str(hub.requests[-1]["range"]).removeprefix("bytes=").rstrip("-"))
    assert GEMMA.size // 4 < resumed_at and kept - resumed_at <= IN_FLIGHT
    assert hub.served[GEMMA.file_name] - GEMMA.size == kept - resumed_at
    assert sha256(tmp_path / "models" / GEMMA.file_name) == GEMMA.sha256


def test_ollama_client_pulls_from_the_hub_and_deletes(hub: FakeHub, hub_server: Server) -> None:
    import ollama

    hub.rate = 50_000_000  # two seconds: several progress lines
    with ollama.Client(host=hub_server.url) as client:
        lines = list(client.pull("hf.co/tester/SmolLM2-135M-Instruct-GGUF:Q4_1", stream=True))
        assert lines[0].status == "pulling manifest" and lines[-1].status == "success"
        done = [p.completed for p in lines if p.completed is not None]
        assert len(done) >= 2 and done == sorted(done) and lines[-2].total == STARTER.size
        assert STARTER_ID in {m.model for m in client.list().models}
        assert client.chat(
            model=STARTER_ID,
            messages=[{"role": "user", "content": "Hi"}],
            options={"num_predict": 2},
        ).done
        with pytest.raises(ollama.ResponseError) as err:
            client.pull("tester/nope-GGUF")
        assert err.value.status_code == 404
        client.delete(STARTER_ID)
        assert STARTER_ID not in {m.model for m in client.list().models}
        with pytest.raises(ollama.ResponseError) as err:
            client.delete(STARTER_ID)
        assert err.value.status_code == 404


def test_a_pull_into_a_full_disk_fails_clearly_and_the_server_keeps_serving(
    tmp_path: Path, model_store: Path, engine_binary: EngineBinary
) -> None:
    """The models folder is a 60 MB tmpfs (in the server's own mount namespace): a pull of
    98 MB fails naming the folder and the space needed, leaves nothing there, and the
    server goes on answering chats (its model is in an extra folder)."""
    models = tmp_path / "models"
    models.mkdir()
    (tmp_path / "home").mkdir(exist_ok=True)
    extra = link_models(model_store, tmp_path / "extra", {"chat-here.Q4_1.gguf": SMOL})
    script = f'mount -t tmpfs -o size=60m tmpfs "{models}" && exec "$@"'

    def in_own_mounts(argv: list[str], **kw: Any) -> subprocess.Popen[bytes]:
        return subprocess.Popen(["unshare", "-m", "sh", "-c", script, "sh", *argv], **kw)

    if subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode != 0:
        pytest.skip("cannot make a mount namespace here")
    with FakeHub() as hub:
        hub.add("tester/SmolLM2-135M-Instruct-GGUF", {SMOL: model_store / SMOL})
        srv = start_server(
            tmp_path,
            models,
            engine_binary,
            popen=in_own_mounts,
            HF_ENDPOINT=hub.url,
            OFFGRID_EXTRA_MODEL_DIRS=str(extra),
        )
        try:
            body = {"repo": "tester/SmolLM2-135M-Instruct-GGUF"}
            with requests.post(f"{srv.url}/api/pulls", json=body, stream=True, timeout=60) as r:
                states = [json.loads(x[6:]) for x in r.iter_lines() if x.startswith(b"data: ")]
            final = states[-1]
            assert final["status"] == "failed", final
            assert f"Not enough space in {models}" in final["message"]
            assert "needs 98.4 MB" in final["message"]
            seen = Path(f"/proc/{srv.proc.pid}/root") / str(models).lstrip("/")
            assert os.listdir(seen) == [], "nothing begun on the full disk"
            chat = {"model": "chat-here.Q4_1", "messages": [{"role": "user", "content": "Hi"}]}
            got = requests.post(f"{srv.url}/v1/chat/completions", json=chat, timeout=120)
            assert got.status_code == 200, got.text
        finally:
            srv.stop()
