"""``/v1/audio/transcriptions``: the form is read for its model and relayed as it came, to
the engine of a model with a projector; clear refusals otherwise. No model that hears can be
had here (docs/decisions.md), so the relaying is shown against the fake engine, and the
refusals against the real one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import requests

from conftest import STARTER_ID, Server, fake_engine_settings, link_models, serve_in_thread
from test_model_kinds import projector

AUDIO = b"RIFF" + bytes(2000)  # what a client would upload; its content does not matter here


@pytest.fixture(scope="module")
def heard(tmp_path_factory: pytest.TempPathFactory, model_store: Path) -> Iterator[str]:
    """A fake-engine server whose starter model has a projector (as an audio model has)."""
    tmp = tmp_path_factory.mktemp("audio")
    models = link_models(model_store, tmp / "m", {"listens.gguf": f"{STARTER_ID}.gguf"})
    projector(models / "mmproj-listens.gguf")
    with serve_in_thread(fake_engine_settings(tmp, models)) as url:
        yield url


def test_a_transcription_form_is_relayed_as_it_came(heard: str) -> None:
    client = openai.OpenAI(base_url=f"{heard}/v1", api_key="x", max_retries=0)
    got = client.audio.transcriptions.create(model="listens", file=("a.wav", AUDIO))
    size, _, kind = got.text.partition(" bytes of ")
    assert int(size) > len(AUDIO) and kind.startswith("multipart/form-data; boundary=")
    client.close()


@pytest.mark.parametrize(
    ("files", "data", "status", "said"),
    [
        ({"file": ("a.wav", AUDIO)}, {}, 400, "'model' is required"),
        (None, {"model": "listens"}, 400, "multipart/form-data"),
        ({"x": ("a.txt", b"x")}, {"model": "listens"}, 400, "'file' is required"),
        ({"file": ("a.wav", AUDIO)}, {"model": "nope"}, 404, "does not exist"),
    ],
)
def test_a_bad_transcription_request_says_what_is_wrong(
    heard: str, files: object, data: dict[str, str], status: int, said: str
) -> None:
    url = f"{heard}/v1/audio/transcriptions"
    got = (
        requests.post(url, files=files, data=data, timeout=30)  # type: ignore[arg-type]
        if files
        else requests.post(url, data=data, timeout=30)
    )
    assert got.status_code == status and said in got.json()["error"]["message"], got.text


def test_a_model_without_a_projector_cannot_transcribe(server: Server) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        server.client().audio.transcriptions.create(model=STARTER_ID, file=("a.wav", AUDIO))
    assert "projector" in str(caught.value)
