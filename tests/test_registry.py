"""Registry and GGUF metadata: ids from file names, metadata read once, bad files named."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

import offgrid.models.scan as scan_mod
from conftest import GEMMA_ID, STARTER_ID, link_models
from offgrid.errors import ModelNotFoundError
from offgrid.models.gguf_meta import read_gguf_info
from offgrid.models.registry import Registry
from offgrid.models.starter import GEMMA, STARTER


@pytest.fixture
def models(tmp_path: Path, model_store: Path) -> Path:
    return link_models(
        model_store, tmp_path / "models", {f.file_name: f.file_name for f in (STARTER, GEMMA)}
    )


def test_metadata_of_the_two_models(model_store: Path) -> None:
    smol = read_gguf_info(model_store / STARTER.file_name)
    assert (smol.architecture, smol.quantization, smol.context_length) == ("llama", "Q4_1", 8192)
    assert smol.chat_template and 130e6 < smol.parameters < 140e6
    gemma = read_gguf_info(model_store / GEMMA.file_name)
    assert (gemma.architecture, gemma.quantization) == ("gemma3", "Q4_K_M")
    assert not gemma.chat_template and gemma.context_length == 32768


def test_ids_are_file_names_without_gguf(models: Path, tmp_path: Path) -> None:
    (models / ".partial.gguf").write_bytes(b"GGUF")
    (models / "notes.txt").write_text("x")
    reg = Registry([models], tmp_path / "index.sqlite")
    assert reg.ids() == [STARTER_ID, GEMMA_ID] or reg.ids() == sorted([STARTER_ID, GEMMA_ID])
    with pytest.raises(ModelNotFoundError, match=STARTER_ID):
        reg.get("../etc/passwd")


def test_listing_never_rereads_unchanged_files(
    models: Path, tmp_path: Path, model_store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[Path] = []
    real = scan_mod.read_gguf_info

    def counting(path: Path) -> object:
        calls.append(path)
        return real(path)

    monkeypatch.setattr(scan_mod, "read_gguf_info", counting)
    (models / STARTER.file_name).unlink()  # a copy, not a link: its mtime changes below
    shutil.copy(model_store / STARTER.file_name, models / STARTER.file_name)
    Registry([models], tmp_path / "index.sqlite").list()
    assert len(calls) == 2
    Registry([models], tmp_path / "index.sqlite").list()  # new process, same index: no reads
    assert len(calls) == 2
    os.utime(models / STARTER.file_name, ns=(10**18, 10**18))  # a changed file is read again
    Registry([models], tmp_path / "index.sqlite").list()
    assert len(calls) == 3


def test_a_file_that_is_not_gguf_is_listed_with_its_problem(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "broken.gguf").write_bytes(b"not a model at all")
    [info] = Registry([models], tmp_path / "index.sqlite").list()
    assert info.gguf is None and info.error and "not a GGUF model file" in info.error
