"""Model kinds and vision projectors (issue 16, items 3 and 4): what the GGUF header says a
model is for, how an mmproj file is paired with its model (in folders, imports, bundles
and Hub pulls) and how the engine is started for each kind.

The GGUF files are small synthetic ones written with the ``gguf`` package.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path

import gguf
import numpy as np
import pytest

from fake_hub import FakeHub
from offgrid.config import load_settings
from offgrid.engine.plan import estimate
from offgrid.engine.process import EngineOptions, build_argv
from offgrid.errors import BadRequestError
from offgrid.hub.client import repo_models
from offgrid.hub.download import fetch_model
from offgrid.models.bundle import export_bundle
from offgrid.models.gguf_meta import GGUFInfo, read_gguf_info
from offgrid.models.importer import import_found
from offgrid.models.keys import Keys
from offgrid.models.pairing import pair
from offgrid.models.registry import ModelInfo, Registry
from offgrid.models.sources import find_candidates

CHATML = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>{% endfor %}"
TOOLS = "{% if tools %}<tools>{{ tools | tojson }}</tools>{% endif %}" + CHATML
THINKING = "{% if enable_thinking %}<think>\n{% endif %}" + CHATML


def write_gguf(
    path: Path,
    arch: str = "llama",
    *,
    template: str | None = None,
    pooling: gguf.PoolingType | None = None,
    causal: bool | None = None,
    general_type: str | None = None,
    tensors: Sequence[str] = (),
    seed: int = 0,
) -> Path:
    """A small valid GGUF file with the given header facts."""
    path.parent.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_context_length(512)
    w.add_embedding_length(8)
    w.add_block_count(1)
    w.add_head_count(2)
    if general_type is not None:
        w.add_type(general_type)
    if template is not None:
        w.add_chat_template(template)
    if pooling is not None:
        w.add_pooling_type(pooling)
    if causal is not None:
        w.add_causal_attention(causal)
    rng = np.random.default_rng(seed)
    for name in ("token_embd.weight", "blk.0.attn_q.weight", *tensors):
        w.add_tensor(name, rng.standard_normal((8, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def projector(path: Path, seed: int = 9) -> Path:
    """A vision projector as llama.cpp writes one: architecture clip, general.type mmproj."""
    return write_gguf(
        path, "clip", general_type="mmproj", tensors=["v.patch_embd.weight"], seed=seed
    )


def registry_of(folder: Path, tmp_path: Path, *more: Path) -> Registry:
    return Registry([folder, *more], tmp_path / "data" / "registry.sqlite")


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    reg = registry_of(tmp_path / "models", tmp_path)
    yield reg
    reg.close()


# -- kinds and capabilities -----------------------------------------------------------------

P = gguf.PoolingType


@pytest.mark.parametrize(
    ("arch", "header", "kind", "capabilities"),
    [
        ("llama", {"template": CHATML}, "chat", ["completion"]),
        ("gemma3", {}, "chat", ["completion"]),  # a base model: no template
        ("qwen3", {"template": TOOLS}, "chat", ["completion", "tools"]),
        ("qwen3", {"template": THINKING}, "chat", ["completion", "thinking"]),
        ("bert", {"pooling": P.MEAN, "causal": False}, "embedding", ["embedding"]),
        ("nomic-bert", {}, "embedding", ["embedding"]),  # by its architecture alone
        ("qwen3", {"pooling": P.LAST, "template": CHATML}, "embedding", ["embedding"]),
        ("llama", {"causal": False}, "embedding", ["embedding"]),
        (
            "bert",
            {"pooling": P.RANK, "tensors": ["cls.weight", "cls.output.weight"]},
            "rerank",
            ["rerank"],
        ),
        ("qwen3", {"pooling": P.RANK, "template": CHATML}, "rerank", ["rerank"]),
        ("jina-bert-v2", {"tensors": ["cls.weight"]}, "rerank", ["rerank"]),
    ],
)
def test_kind_and_capabilities_come_from_the_gguf_header(
    tmp_path: Path, arch: str, header: dict[str, object], kind: str, capabilities: list[str]
) -> None:
    path = write_gguf(tmp_path / "m.gguf", arch, **header)  # type: ignore[arg-type]
    model = ModelInfo("m", path, path.stat().st_size, 0.0, read_gguf_info(path))
    assert (model.kind, model.capabilities) == (kind, capabilities)
    shown = model.as_dict()
    assert (shown["kind"], shown["capabilities"], shown["projector"]) == (kind, capabilities, None)


def test_a_projector_header_says_so(tmp_path: Path) -> None:
    info = read_gguf_info(projector(tmp_path / "mmproj-x.gguf"))
    assert info.projector and info.general_type == "mmproj" and info.architecture == "clip"
    assert not read_gguf_info(write_gguf(tmp_path / "x.gguf")).projector


def test_metadata_stored_by_an_older_version_is_read_again(tmp_path: Path) -> None:
    """Rows written before kinds were known lack their fields: the file is read anew."""
    models = tmp_path / "models"
    write_gguf(models / "e.gguf", "qwen3", pooling=P.LAST)
    reg = registry_of(models, tmp_path)
    assert reg.get("e").kind == "embedding"
    reg.close()
    db = sqlite3.connect(tmp_path / "data" / "registry.sqlite")
    (meta,) = db.execute("SELECT meta FROM files").fetchone()
    old = json.loads(meta)[:19]  # the fields up to data_end
    db.execute("UPDATE files SET meta = ?", (json.dumps(old),))
    db.commit()
    db.close()
    with pytest.raises(ValueError):
        GGUFInfo.from_stored(old)
    assert registry_of(models, tmp_path).get("e").kind == "embedding"


# -- pairing --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("models", "projectors", "one_model", "expected"),
    [
        (["SmolVLM-256M-Instruct-Q8_0"], ["mmproj-SmolVLM-256M-Instruct-Q8_0.gguf"], False,
         {"SmolVLM-256M-Instruct-Q8_0": "mmproj-SmolVLM-256M-Instruct-Q8_0.gguf"}),
        (["V-Q8_0", "V-Q4_K_M", "SmolLM2-135M"], ["mmproj-V-f16.gguf", "mmproj-V-Q8_0.gguf"], False,
         {"V-Q8_0": "mmproj-V-Q8_0.gguf", "V-Q4_K_M": "mmproj-V-Q8_0.gguf"}),
        (["gemma-3-4b-it-Q4_K_M"], ["mmproj-model-f16.gguf"], False,
         {"gemma-3-4b-it-Q4_K_M": "mmproj-model-f16.gguf"}),
        (["a-Q4_0", "b-Q4_0"], ["mmproj-model-f16.gguf"], False, {}),  # whose? nobody's
        (["a-Q4_0", "a-Q8_0"], ["mmproj-F16.gguf"], True,
         {"a-Q4_0": "mmproj-F16.gguf", "a-Q8_0": "mmproj-F16.gguf"}),
        (["Qwen2.5-VL-3B-Q4_K_M", "other"], ["Qwen2.5-VL-3B-mmproj-f16.gguf"], False,
         {"Qwen2.5-VL-3B-Q4_K_M": "Qwen2.5-VL-3B-mmproj-f16.gguf"}),
    ],
)  # fmt: skip
def test_projectors_pair_by_name(
    models: list[str], projectors: list[str], one_model: bool, expected: dict[str, str]
) -> None:
    assert pair(models, projectors, one_model=one_model) == expected


def test_a_projector_in_a_folder_is_not_a_model_but_gives_its_model_vision(
    registry: Registry,
) -> None:
    models = registry.models_dir
    vlm = write_gguf(models / "SmolVLM-256M-Instruct-Q8_0.gguf", template=CHATML)
    proj = projector(models / "mmproj-SmolVLM-256M-Instruct-Q8_0.gguf")
    write_gguf(models / "SmolLM2-135M-Instruct.Q4_1.gguf", template=CHATML, seed=1)
    assert registry.ids() == ["SmolLM2-135M-Instruct.Q4_1", "SmolVLM-256M-Instruct-Q8_0"]
    model = registry.get("SmolVLM-256M-Instruct-Q8_0")
    assert model.projector == proj and model.files == (vlm, proj)
    assert model.size == vlm.stat().st_size + proj.stat().st_size == model.as_dict()["size"]
    assert model.capabilities == ["completion", "vision"]
    assert model.as_dict()["projector"] == str(proj)
    assert registry.get("SmolLM2-135M-Instruct.Q4_1").projector is None
    assert [r.status for r in registry.verify()] == ["OK", "OK"]
    assert registry.recorded_hash(proj) is not None  # verify hashed the projector too


def test_a_lone_projector_pairs_with_the_lone_model_of_its_folder(
    registry: Registry, tmp_path: Path
) -> None:
    extra = tmp_path / "stick"
    write_gguf(extra / "gemma-3-4b-it-Q4_K_M.gguf")
    projector(extra / "vision.gguf")  # not named mmproj: its header says what it is
    reg = registry_of(registry.models_dir, tmp_path, extra)
    assert [(m.id, m.projector) for m in reg.list()] == [
        ("gemma-3-4b-it-Q4_K_M", extra / "vision.gguf")
    ]


def test_removing_a_model_deletes_its_projector_unless_another_uses_it(
    registry: Registry,
) -> None:
    models = registry.models_dir
    write_gguf(models / "V-Q8_0.gguf", seed=1)
    write_gguf(models / "V-Q4_K_M.gguf", seed=2)
    proj = projector(models / "mmproj-V-f16.gguf")
    assert registry.get("V-Q8_0").projector == registry.get("V-Q4_K_M").projector == proj
    assert "projector kept" in registry.remove("V-Q8_0")
    assert proj.exists()
    assert "and its projector" in registry.remove("V-Q4_K_M")
    assert sorted(p.name for p in models.iterdir()) == []


# -- imports and bundles --------------------------------------------------------------------


def imported(registry: Registry, source: Path, **options: object) -> list[tuple[str, str]]:
    found = find_candidates(str(source), Keys(registry.models_dir.parent / "keys"))
    return [(r.model_id, r.status) for r in import_found(registry, found, **options)]  # type: ignore[arg-type]


def test_importing_a_model_file_brings_its_projector(registry: Registry, tmp_path: Path) -> None:
    src = tmp_path / "downloads"
    write_gguf(src / "gemma-3-4b-it-Q4_K_M.gguf")
    proj = projector(src / "mmproj-model-f16.gguf")
    with pytest.raises(BadRequestError, match="vision projector"):
        find_candidates(str(proj), Keys(tmp_path / "keys"))
    assert imported(registry, src / "gemma-3-4b-it-Q4_K_M.gguf") == [
        ("gemma-3-4b-it-Q4_K_M", "imported")
    ]
    model = registry.get("gemma-3-4b-it-Q4_K_M")
    assert model.projector == registry.models_dir / "mmproj-gemma-3-4b-it-Q4_K_M.gguf"
    assert model.projector.read_bytes() == proj.read_bytes()
    assert registry.recorded_hash(model.projector) is not None
    assert "vision" in model.capabilities


def test_importing_a_folder_pairs_and_linking_keeps_the_pair(
    registry: Registry, tmp_path: Path
) -> None:
    src = tmp_path / "stick"
    write_gguf(src / "V-Q8_0.gguf", seed=1)
    projector(src / "mmproj-V-Q8_0.gguf")
    write_gguf(src / "text-Q4_0.gguf", seed=2)
    assert sorted(imported(registry, src, link=True)) == [
        ("V-Q8_0", "linked"),
        ("text-Q4_0", "linked"),
    ]
    model = registry.get("V-Q8_0")
    assert model.reference and model.projector == src / "mmproj-V-Q8_0.gguf"
    assert registry.get("text-Q4_0").projector is None
    registry.remove("V-Q8_0")
    assert registry.ids() == ["text-Q4_0"] and (src / "mmproj-V-Q8_0.gguf").exists()
    assert registry.recorded_hash(src / "mmproj-V-Q8_0.gguf") is None  # forgotten too


def test_a_bundle_carries_a_models_projector(registry: Registry, tmp_path: Path) -> None:
    write_gguf(registry.models_dir / "V-Q8_0.gguf")
    proj = projector(registry.models_dir / "mmproj-V-Q8_0.gguf")
    keys = Keys(tmp_path / "keys")
    manifest_path = export_bundle(registry, ["V-Q8_0"], tmp_path / "usb", keys=keys)
    [entry] = json.loads(manifest_path.read_text())["models"]
    assert entry["projector"]["file_name"] == "mmproj-V-Q8_0.gguf"
    assert entry["projector"]["size"] == proj.stat().st_size
    sums = (manifest_path.parent / "SHA256SUMS").read_text().splitlines()
    assert [line.split()[1] for line in sums] == ["V-Q8_0.gguf", "mmproj-V-Q8_0.gguf"]

    other = registry_of(tmp_path / "other" / "models", tmp_path / "other")
    found = find_candidates(
        str(tmp_path / "usb"), Keys(tmp_path / "other" / "keys"), allow_untrusted=True
    )
    assert [r.status for r in import_found(other, found)] == ["imported"]
    assert other.get("V-Q8_0").projector == other.models_dir / "mmproj-V-Q8_0.gguf"
    assert (
        other.recorded_hash(other.models_dir / "mmproj-V-Q8_0.gguf") == entry["projector"]["sha256"]
    )

    damaged = tmp_path / "usb" / "offgrid-models" / "mmproj-V-Q8_0.gguf"
    data = bytearray(damaged.read_bytes())
    data[-1] ^= 0xFF
    damaged.write_bytes(bytes(data))
    third = registry_of(tmp_path / "third" / "models", tmp_path / "third")
    found = find_candidates(
        str(tmp_path / "usb"), Keys(tmp_path / "third" / "keys"), allow_untrusted=True
    )
    [report] = import_found(third, found)
    assert report.status == "refused" and "damaged" in report.detail
    assert third.ids() == []


# -- Hub pulls ------------------------------------------------------------------------------


def test_a_pull_of_a_vision_model_fetches_its_projector(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = tmp_path / "hubfiles"
    with FakeHub() as hub:
        hub.add(
            "tester/V-GGUF",
            {
                "V-Q8_0.gguf": write_gguf(files / "a.gguf", seed=1),
                "V-Q4_K_M.gguf": write_gguf(files / "b.gguf", seed=2),
                "mmproj-model-f16.gguf": projector(files / "p.gguf"),
            },
        )
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.delenv("HF_TOKEN", raising=False)
        remote = {m.model_id: m for m in repo_models("tester/V-GGUF")}
        assert sorted(remote) == ["V-Q4_K_M", "V-Q8_0"]  # the projector is no model
        chosen = remote["V-Q8_0"]
        assert chosen.projector is not None and chosen.as_dict()["vision"] is True
        assert chosen.size == sum(f.size for f in chosen.downloads) > chosen.files[0].size
        assert fetch_model(chosen, registry) is True
    model = registry.get("V-Q8_0")
    assert model.projector == registry.models_dir / "mmproj-V-Q8_0.gguf"
    assert model.projector.read_bytes() == (files / "p.gguf").read_bytes()
    assert registry.recorded_hash(model.projector) == chosen.projector.sha256


# -- engine flags ---------------------------------------------------------------------------


def argv_of(model: ModelInfo, options: EngineOptions | None = None) -> list[str]:
    return build_argv(Path("llama-server"), model, options or EngineOptions(), 1)


def model_of(path: Path, **more: object) -> ModelInfo:
    return ModelInfo(path.stem, path, path.stat().st_size, 0.0, read_gguf_info(path), **more)  # type: ignore[arg-type]


def test_each_kind_starts_the_engine_in_its_mode(tmp_path: Path) -> None:
    chat = argv_of(model_of(write_gguf(tmp_path / "chat.gguf", template=CHATML)))
    assert chat[-3:] == ["--embeddings", "--pooling", "mean"] and "--mmproj" not in chat
    assert "--embeddings" not in argv_of(
        model_of(tmp_path / "chat.gguf"), EngineOptions(embeddings=False)
    )

    bert = write_gguf(tmp_path / "bert.gguf", "bert", pooling=P.CLS, causal=False)
    argv = argv_of(model_of(bert))
    assert "--embeddings" in argv and "--pooling" not in argv  # its own: cls
    assert argv[argv.index("--ubatch-size") + 1] == "512"  # a whole input in one batch
    assert "--chat-template-file" not in argv and "--reranking" not in argv

    qwen = argv_of(model_of(write_gguf(tmp_path / "q.gguf", "qwen3", pooling=P.LAST)))
    assert "--embeddings" in qwen and "--pooling" not in qwen and "--ubatch-size" not in qwen
    nomic = argv_of(model_of(write_gguf(tmp_path / "n.gguf", "nomic-bert", causal=False)))
    assert nomic[nomic.index("--embeddings") :][:3] == ["--embeddings", "--pooling", "mean"]

    rerank = write_gguf(tmp_path / "r.gguf", "bert", pooling=P.RANK, causal=False)
    argv = argv_of(model_of(rerank))
    assert "--reranking" in argv and "--embeddings" not in argv and "--pooling" not in argv


def test_a_vision_model_starts_with_its_projector_and_is_sized_with_it(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "V-Q8_0.gguf", template=CHATML)
    proj = projector(tmp_path / "mmproj-V-Q8_0.gguf")
    plain = model_of(path)
    extra = proj.stat().st_size
    vision = model_of(path, projector=proj, projector_size=extra)
    vision = dataclasses.replace(vision, size=vision.size + extra)
    argv = argv_of(vision)
    assert argv[argv.index("--mmproj") + 1] == str(proj)
    settings = load_settings({"HOME": str(tmp_path)})
    with_it, without = estimate(settings, vision), estimate(settings, plain)
    assert with_it["cpu_ram_bytes"] - without["cpu_ram_bytes"] == proj.stat().st_size
    assert with_it["gpu_vram_bytes"] - without["gpu_vram_bytes"] == proj.stat().st_size
