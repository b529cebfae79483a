"""Import, export, verification and removal of models, with real files on real disk (issue 5).

Most tests build small but valid GGUF files; the bundle and store layouts (Ollama,
HuggingFace cache, LM Studio) are built by the tests as those tools lay them out.
"""

from __future__ import annotations

import base64
import filecmp
import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest

from conftest import link_models, wait_for
from offgrid.atomic_files import copy_hashed
from offgrid.config import load_settings
from offgrid.errors import BadRequestError, IntegrityError, StorageError
from offgrid.models.bundle import export_bundle
from offgrid.models.importer import import_found
from offgrid.models.keys import Keys
from offgrid.models.registry import Registry, Report
from offgrid.models.sources import find_candidates
from offgrid.models.starter import GEMMA, STARTER

OFFGRID = [sys.executable, "-m", "offgrid"]


def tiny_gguf(path: Path, seed: int = 0) -> Path:
    """A small valid GGUF model file whose bytes depend on ``seed``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name(f"tiny-{seed}")
    w.add_context_length(256)
    w.add_embedding_length(8)
    w.add_block_count(2)
    w.add_head_count(2)
    rng = np.random.default_rng(seed)
    w.add_tensor("token_embd.weight", rng.standard_normal((16, 8), dtype=np.float32))
    for i in range(2):
        w.add_tensor(f"blk.{i}.attn_q.weight", rng.standard_normal((8, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def flip_byte(path: Path, offset: int = -10) -> None:
    with path.open("r+b") as fh:
        fh.seek(offset, os.SEEK_END if offset < 0 else os.SEEK_SET)
        b = fh.read(1)
        fh.seek(-1, os.SEEK_CUR)
        fh.write(bytes([b[0] ^ 0xFF]))


class Node:
    """One OffGrid node's models: its folders, registry and keys, as the CLI sets them up."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.env = {
            **os.environ,
            "HOME": str(root / "home"),
            "OFFGRID_MODELS_DIR": str(root / "models"),
            "OFFGRID_DATA_DIR": str(root / "data"),
            "COLUMNS": "250",
        }
        self.settings = load_settings(self.env)
        self.registry = Registry.for_settings(self.settings)
        self.keys = Keys(self.settings.data_dir / "keys")

    @property
    def models(self) -> Path:
        return self.settings.models_dir

    def import_(self, source: Path | str, **options: object) -> list[Report]:
        found = find_candidates(
            str(source),
            self.keys,
            allow_untrusted=bool(options.pop("allow_untrusted", False)),
            ollama_dir=options.pop("ollama_dir", None),  # type: ignore[arg-type]
        )
        return list(import_found(self.registry, found, **options))  # type: ignore[arg-type]

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*OFFGRID, *args], env=self.env, capture_output=True, text=True, timeout=120
        )


@pytest.fixture
def node(tmp_path: Path) -> Node:
    return Node(tmp_path / "node")


def statuses(outcomes: list[Report]) -> dict[str, str]:
    return {o.model_id: o.status for o in outcomes}


# -- import --------------------------------------------------------------------------------


def test_import_of_a_file_copies_it_and_records_its_hash(node: Node, model_store: Path) -> None:
    result = node.cli("import", str(model_store / STARTER.file_name))
    assert result.returncode == 0, result.stderr
    assert "imported" in result.stdout
    [model] = node.registry.list()
    assert model.id == STARTER.model_id and model.sha256 == STARTER.sha256
    assert model.origin["source"] == str(model_store / STARTER.file_name)
    assert filecmp.cmp(model.path, model_store / STARTER.file_name, shallow=False)
    assert not (model.path.samefile(model_store / STARTER.file_name))  # a copy, not a link


def test_import_of_a_folder_takes_every_model_and_refuses_what_is_not_one(
    node: Node, tmp_path: Path
) -> None:
    usb = tmp_path / "usb"
    tiny_gguf(usb / "one.gguf", 1)
    tiny_gguf(usb / "deep" / "er" / "two.gguf", 2)
    (usb / "notes.txt").write_text("hello")
    (usb / "renamed.gguf").write_text("I am a text file")
    result = node.cli("import", str(usb))
    assert result.returncode == 1  # something was refused
    assert "renamed.gguf is not a GGUF model file" in " ".join(result.stdout.split())
    assert "2 imported, 1 refused, 1 not .gguf" in result.stdout
    assert node.registry.ids() == ["one", "two"]
    assert not (node.models / "renamed.gguf").exists()


def test_a_duplicate_is_skipped_and_a_name_clash_is_refused(node: Node, tmp_path: Path) -> None:
    first = tiny_gguf(tmp_path / "a" / "m.gguf", 1)
    assert statuses(node.import_(first)) == {"m": "imported"}
    copy = tmp_path / "b" / "other-name.gguf"
    copy.parent.mkdir()
    copy.write_bytes(first.read_bytes())
    [dup] = node.import_(copy)
    assert (dup.status, dup.detail) == ("skipped", "already installed as m")
    clash = tiny_gguf(tmp_path / "c" / "m.gguf", 2)
    [refused] = node.import_(clash)
    assert refused.status == "refused" and "--name" in refused.detail
    assert sha256(node.models / "m.gguf") == sha256(first)  # never overwritten
    assert statuses(node.import_(clash, name="m2")) == {"m2": "imported"}


def test_a_sidecar_hash_or_sha256sums_vouches_for_a_file(node: Node, tmp_path: Path) -> None:
    good = tiny_gguf(tmp_path / "src" / "good.gguf", 1)
    tiny_gguf(tmp_path / "src" / "bad.gguf", 2)
    (tmp_path / "src" / "SHA256SUMS").write_text(
        f"{sha256(good)}  good.gguf\n{sha256(good)}  bad.gguf\n"
    )
    got = {o.model_id: o for o in node.import_(tmp_path / "src")}
    assert got["good"].status == "imported" and "SHA256SUMS" in got["good"].detail
    assert got["bad"].status == "refused" and "bad.gguf is damaged" in got["bad"].detail
    assert node.registry.ids() == ["good"]
    other = tiny_gguf(tmp_path / "nameless" / "other.gguf", 4)  # a line without a name
    (other.parent / "SHA256SUMS").write_text("0" * 64 + "\n")  # vouches for no file
    [o] = node.import_(other)
    assert o.status == "imported" and o.detail == "sha256 recorded"
    side = tiny_gguf(tmp_path / "one" / "side.gguf", 3)
    side.with_name("side.gguf.sha256").write_text("0" * 64 + "  side.gguf\n")
    [o] = node.import_(side)
    assert o.status == "refused" and "side.gguf.sha256" in o.detail


def ollama_store(root: Path, name: str, tag: str, blob_source: Path) -> str:
    """An Ollama model store holding ``blob_source`` as ``name:tag``; returns the digest."""
    digest = sha256(blob_source)
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    os.link(blob_source, root / "blobs" / f"sha256-{digest}")
    manifest = root / "manifests" / "registry.ollama.ai" / "library" / name / tag
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text(
        json.dumps(
            {
                "schemaVersion": 2,
                "layers": [
                    {"mediaType": "application/vnd.ollama.image.template", "digest": "sha256:0"},
                    {
                        "mediaType": "application/vnd.ollama.image.model",
                        "digest": f"sha256:{digest}",
                        "size": blob_source.stat().st_size,
                    },
                ],
            }
        )
    )
    return digest


def test_import_from_an_ollama_store_by_name_by_copy_or_by_reference(
    node: Node, tmp_path: Path, model_store: Path
) -> None:
    store = tmp_path / "ollama"
    ollama_store(store, "smollm2", "135m", model_store / STARTER.file_name)
    ollama_store(store, "tiny", "latest", tiny_gguf(tmp_path / "t.gguf", 5))
    result = node.cli("import", "smollm2:135m", "--ollama-dir", str(store))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Ollama manifest" in result.stdout
    assert sha256(node.models / "smollm2-135m.gguf") == STARTER.sha256
    [linked] = node.import_("tiny", ollama_dir=store, link=True)
    assert linked.status == "linked"
    model = node.registry.get("tiny")
    assert model.reference and model.path.parent == store / "blobs"
    assert not (node.models / "tiny.gguf").exists()
    assert "forgot tiny" in node.registry.remove("tiny")
    assert (store / "blobs").is_dir() and any((store / "blobs").iterdir())  # left alone
    with pytest.raises(BadRequestError, match="No Ollama model 'nope:1b'"):
        node.import_("nope:1b", ollama_dir=store)
    with pytest.raises(BadRequestError, match="not an Ollama model name"):
        node.import_("../../etc:passwd", ollama_dir=store)


def test_a_whole_ollama_store_imports_and_a_wrong_digest_is_refused(
    node: Node, tmp_path: Path
) -> None:
    store = tmp_path / "ollama"
    ollama_store(store, "a", "latest", tiny_gguf(tmp_path / "a.gguf", 1))
    digest = ollama_store(store, "b", "q4", tiny_gguf(tmp_path / "b.gguf", 2))
    flip_byte(store / "blobs" / f"sha256-{digest}")  # the blob no longer matches its name
    broken = store / "manifests" / "registry.ollama.ai" / "library" / "c" / "latest"
    broken.parent.mkdir()
    broken.write_text("{not json")
    got = statuses(node.import_(store))
    assert got == {"a": "imported", "b-q4": "refused", "latest": "refused"}


def hf_cache(root: Path, repo: str, files: dict[str, Path]) -> Path:
    """A HuggingFace hub cache folder holding ``files`` of ``repo`` at one revision."""
    repo_dir = root / f"models--{repo.replace('/', '--')}"
    revision = "0123456789abcdef0123456789abcdef01234567"
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(revision)
    snap = repo_dir / "snapshots" / revision
    snap.mkdir(parents=True)
    (repo_dir / "blobs").mkdir()
    for name, source in files.items():
        blob = repo_dir / "blobs" / sha256(source)
        blob.write_bytes(source.read_bytes())
        (snap / name).symlink_to(Path("../../blobs") / blob.name)
    return repo_dir


def test_import_from_a_huggingface_cache_checks_blob_hashes(node: Node, tmp_path: Path) -> None:
    cache = tmp_path / "hub"
    repo = hf_cache(
        cache,
        "someone/Tiny-GGUF",
        {
            "tiny.Q8_0.gguf": tiny_gguf(tmp_path / "x.gguf", 1),
            "tiny.F16.gguf": tiny_gguf(tmp_path / "y.gguf", 2),
        },
    )
    flip_byte(next(p for p in (repo / "blobs").iterdir() if p.name == sha256(tmp_path / "y.gguf")))
    got = {o.model_id: o for o in node.import_(cache)}
    assert got["tiny.Q8_0"].status == "imported" and "HuggingFace cache" in got["tiny.Q8_0"].detail
    assert got["tiny.F16"].status == "refused"
    origin = node.registry.get("tiny.Q8_0").origin
    assert origin["repo"] == "someone/Tiny-GGUF" and origin["kind"] == "hf-cache"


def test_import_from_an_lm_studio_folder(node: Node, tmp_path: Path) -> None:
    lms = tmp_path / ".lmstudio" / "models"
    tiny_gguf(lms / "lmstudio-community" / "Tiny-GGUF" / "tiny-Q4_K_M.gguf", 1)
    tiny_gguf(lms / "lmstudio-community" / "Tiny-GGUF" / "mmproj-tiny-f16.gguf", 2)
    [o] = node.import_(lms, link=True)
    assert (o.model_id, o.status) == ("tiny-Q4_K_M", "linked")
    assert node.registry.get("tiny-Q4_K_M").origin["kind"] == "lmstudio"


# -- bundles -------------------------------------------------------------------------------


def test_a_bundle_exported_then_imported_elsewhere_matches_byte_for_byte(
    node: Node, tmp_path: Path, model_store: Path
) -> None:
    node.import_(model_store / STARTER.file_name)
    tiny_gguf(node.models / "tiny.gguf", 1)  # dropped in by hand: hashed during export
    result = node.cli("export", STARTER.model_id, "tiny", str(tmp_path / "usb"))
    assert result.returncode == 0, result.stderr
    bundle = tmp_path / "usb" / "offgrid-models"
    check = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=bundle, capture_output=True)
    assert check.returncode == 0 and check.stdout.count(b": OK") == 2
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert {m["model_id"] for m in manifest["models"]} == {STARTER.model_id, "tiny"}
    assert manifest["signature"]["public_key"] == node.keys.public_key()
    assert "offgrid import" in (tmp_path / "usb" / "README.txt").read_text()

    other = Node(tmp_path / "other")
    result = other.cli("import", str(tmp_path / "usb"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "signed by an unknown key" in " ".join(result.stdout.split())
    for model_id in (STARTER.model_id, "tiny"):
        assert filecmp.cmp(
            node.registry.get(model_id).path, other.models / f"{model_id}.gguf", shallow=False
        )
        assert other.registry.get(model_id).sha256 == node.registry.get(model_id).sha256
    assert other.registry.get("tiny").origin["kind"] == "bundle"


@pytest.fixture
def bundle(node: Node, tmp_path: Path) -> Path:
    tiny_gguf(node.models / "a.gguf", 1)
    tiny_gguf(node.models / "b.gguf", 2)
    export_bundle(node.registry, ["a", "b"], tmp_path / "usb", keys=node.keys)
    return tmp_path / "usb" / "offgrid-models"


def test_one_flipped_byte_in_a_bundle_is_refused_naming_the_file(
    bundle: Path, tmp_path: Path
) -> None:
    flip_byte(bundle / "b.gguf")
    other = Node(tmp_path / "other")
    result = other.cli("import", str(bundle.parent))
    assert result.returncode == 1
    text = " ".join(result.stdout.split())
    assert "b.gguf is damaged" in text and "the bundle manifest" in text
    assert other.registry.ids() == ["a"]
    assert not [p for p in other.models.iterdir() if p.name.startswith(".b.gguf")]


@pytest.mark.parametrize("tamper", ["contents", "signature", "key"])
def test_a_tampered_manifest_is_refused(bundle: Path, tmp_path: Path, tamper: str) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    if tamper == "contents":  # swap in another file's hash, keep the signature
        manifest["models"][0]["sha256"] = sha256(bundle / "b.gguf")
    elif tamper == "signature":
        value = bytearray(base64.b64decode(manifest["signature"]["value"]))
        value[0] ^= 1
        manifest["signature"]["value"] = base64.b64encode(value).decode()
    else:  # re-signed by someone else, claiming to be the exporter
        forger = Keys(tmp_path / "forger").sign(manifest)
        manifest["signature"]["value"] = forger["value"]
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    other = Node(tmp_path / "other")
    result = other.cli("import", str(bundle.parent))
    assert result.returncode == 1
    assert "does not match its contents" in " ".join(result.stderr.split())
    assert other.registry.ids() == []


def test_trust_once_configured_refuses_bundles_from_unknown_keys(
    bundle: Path, tmp_path: Path, node: Node
) -> None:
    other = Node(tmp_path / "other")
    stranger = Keys(tmp_path / "stranger")
    other.keys.trust(stranger.public_key(), "someone else")
    with pytest.raises(IntegrityError, match="accepts only bundles signed by a trusted key"):
        other.import_(bundle)
    assert statuses(other.import_(bundle, allow_untrusted=True)) == {
        "a": "imported",
        "b": "imported",
    }
    third = Node(tmp_path / "third")
    assert (
        third.cli(
            "signing-key", "trust", node.keys.public_key(), "--name", "field laptop"
        ).returncode
        == 0
    )
    third.keys.trust(stranger.public_key())
    assert {o.status for o in third.import_(bundle)} == {"imported"}


@pytest.mark.parametrize(
    "file_name", ["../escape.gguf", "/etc/passwd.gguf", "sub/dir.gguf", ".hidden.gguf", "x.txt"]
)
def test_a_manifest_naming_unsafe_paths_is_refused(
    node: Node, tmp_path: Path, file_name: str
) -> None:
    bundle = tmp_path / "evil" / "offgrid-models"
    tiny_gguf(bundle / "ok.gguf", 1)
    entry = {"file_name": file_name, "model_id": "ok", "sha256": sha256(bundle / "ok.gguf")}
    (bundle / "manifest.json").write_text(json.dumps({"models": [entry]}))
    with pytest.raises(BadRequestError, match=r"not a plain \.gguf file name"):
        node.import_(bundle.parent)
    assert node.registry.ids() == []


def test_symlinks_that_lead_out_are_refused(node: Node, tmp_path: Path) -> None:
    bundle = tmp_path / "evil" / "offgrid-models"
    outside = tiny_gguf(tmp_path / "secret.gguf", 1)
    bundle.mkdir(parents=True)
    (bundle / "ok.gguf").symlink_to(outside)
    entry = {"file_name": "ok.gguf", "sha256": sha256(outside)}
    (bundle / "manifest.json").write_text(json.dumps({"models": [entry]}))
    with pytest.raises(BadRequestError, match="symbolic link"):
        node.import_(bundle.parent)
    repo = hf_cache(tmp_path / "hub", "a/b", {"ok.gguf": tiny_gguf(tmp_path / "ok.gguf", 2)})
    snapshot = repo / "snapshots" / "0123456789abcdef0123456789abcdef01234567"
    (snapshot / "x.gguf").symlink_to(outside)
    got = {o.model_id: o for o in node.import_(tmp_path / "hub")}
    assert got["x"].status == "refused" and "outside its cache folder" in got["x"].detail
    assert got["ok"].status == "imported"
    with pytest.raises(BadRequestError, match=r"plain \.gguf file name"):
        node.import_(outside, name="../../x")


# -- crashes and full disks ----------------------------------------------------------------


def test_an_import_killed_halfway_leaves_no_model_and_a_rerun_completes(
    node: Node, tmp_path: Path, model_store: Path
) -> None:
    big = tmp_path / "big.gguf"  # a whole model with 1.5 GB of padding after it: slow to copy
    big.write_bytes((model_store / GEMMA.file_name).read_bytes())
    os.truncate(big, big.stat().st_size + 1_500_000_000)
    proc = subprocess.Popen([*OFFGRID, "import", str(big)], env=node.env)

    def copied() -> bool:
        partials = list(node.models.glob(f".big.gguf.{proc.pid}.*.partial"))
        return bool(partials) and partials[0].stat().st_size > 300_000_000

    wait_for(copied, 60, "the copy to be under way")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert node.registry.ids() == []
    assert not (node.models / "big.gguf").exists()
    result = node.cli("import", str(big))
    assert result.returncode == 0, result.stdout + result.stderr
    assert node.registry.ids() == ["big"]
    assert sorted(p.name for p in node.models.iterdir()) == ["big.gguf"]  # partial cleaned


def in_small_tmpfs(
    folder: Path, megabytes: int, command: list[str], env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """Run ``command`` with a tmpfs of ``megabytes`` mounted on ``folder`` (a private mount
    namespace, so nothing outside the test sees it)."""
    folder.mkdir(parents=True, exist_ok=True)
    script = f'mount -t tmpfs -o size={megabytes}m tmpfs "{folder}" && exec "$@"'
    probe = subprocess.run(["unshare", "-Urm", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a mount namespace here: {probe.stderr.decode()}")
    return subprocess.run(
        ["unshare", "-Urm", "sh", "-c", script, "sh", *command],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_full_disk_gives_a_clear_error_and_leaves_nothing(
    node: Node, tmp_path: Path, model_store: Path
) -> None:
    listing = f"import os; print(sorted(os.listdir({str(node.models)!r})))"
    result = in_small_tmpfs(
        node.models,
        60,
        [
            "sh",
            "-c",
            f'"$0" -m offgrid import "$1"; "$0" -c "{listing}"',
            sys.executable,
            str(model_store / STARTER.file_name),
        ],
        node.env,
    )
    text = " ".join(result.stderr.split())
    assert "Not enough space" in text and "needs 98.4 MB" in text
    assert result.stdout.strip() == "[]"  # nothing written
    # The check passed but the disk fills while writing: ENOSPC, and nothing is left.
    code = (
        "import sys, offgrid.atomic_files as t; from pathlib import Path; "
        "t.check_free_space = lambda *a, **k: None; "
        "dest = Path(sys.argv[2]) / 'm.gguf'\n"
        "try: t.copy_hashed(Path(sys.argv[1]), dest)\n"
        "except t.StorageError as e: print('ERROR', e.message)\n"
        "import os; print(sorted(os.listdir(dest.parent)))"
    )
    result = in_small_tmpfs(
        node.models,
        60,
        [sys.executable, "-c", code, str(model_store / STARTER.file_name), str(node.models)],
        node.env,
    )
    text = " ".join(result.stdout.split())
    assert "ERROR The disk holding" in text and "is full" in text, result.stderr
    assert text.endswith("[]")
    assert StorageError.status == 507


def test_an_export_to_a_full_stick_names_it_and_leaves_nothing(
    node: Node, tmp_path: Path, model_store: Path
) -> None:
    link_models(model_store, node.models, {STARTER.file_name: STARTER.file_name})
    stick = tmp_path / "stick"
    listing = f"import os; print(sorted(os.listdir({str(stick)!r})))"
    result = in_small_tmpfs(
        stick,
        60,
        [
            "sh",
            "-c",
            f'"$0" -m offgrid export "$1" "$2"; "$0" -c "{listing}"',
            sys.executable,
            STARTER.model_id,
            str(stick),
        ],
        node.env,
    )
    text = " ".join(result.stderr.split())
    assert f"Not enough space in {stick}" in text and "needs 98.4 MB" in text, text
    assert result.stdout.strip() == "[]", "no bundle begun"


def test_copy_never_overwrites_unless_asked(tmp_path: Path) -> None:
    src = tiny_gguf(tmp_path / "a.gguf", 1)
    dest = tiny_gguf(tmp_path / "out" / "a.gguf", 2)
    with pytest.raises(FileExistsError):
        copy_hashed(src, dest)
    assert sha256(dest) != sha256(src)
    assert copy_hashed(src, dest, overwrite=True) == sha256(src) == sha256(dest)


# -- verify, show, remove ------------------------------------------------------------------


def test_verify_reports_ok_changed_and_missing(node: Node, tmp_path: Path) -> None:
    for i, name in enumerate(("ok", "changed", "gone")):
        node.import_(tiny_gguf(tmp_path / "src" / f"{name}.gguf", i))
    tiny_gguf(node.models / "new.gguf", 9)  # dropped in by hand: hashed on first verify
    target = node.models / "changed.gguf"
    st = target.stat()
    flip_byte(target)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))  # the same size and mtime: still found
    (node.models / "gone.gguf").unlink()
    os.truncate(node.models / "ok.gguf", 1000)  # cut short: no longer listed, still reported
    result = node.cli("verify")
    assert result.returncode == 1
    lines = {line.split()[1]: line.split()[0] for line in result.stdout.splitlines()[:-1]}
    assert lines == {"ok": "CHANGED", "changed": "CHANGED", "new": "OK", "gone": "MISSING"}
    text = " ".join(result.stdout.split())
    assert (
        "hash recorded" in text and "--accept changed" in text and "ok.gguf is incomplete" in text
    )
    assert node.cli("verify", "--accept", "changed").returncode == 0
    assert "forgot gone" in node.cli("remove", "gone").stdout
    (node.models / "ok.gguf").unlink()
    assert "forgot ok" in node.cli("remove", "ok").stdout
    assert node.cli("verify").returncode == 0


def test_show_prints_metadata_memory_hash_and_origin(node: Node, model_store: Path) -> None:
    node.import_(model_store / STARTER.file_name)
    result = node.cli("show", STARTER.model_id, "--json")
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["sha256"] == STARTER.sha256 and shown["quantization"] == "Q4_1"
    assert shown["chat_template"] is True and shown["context_length"] == 8192
    assert shown["memory"]["cpu_ram_bytes"] > STARTER.size
    assert shown["origin"]["kind"] == "file"
    result = node.cli("show", "nope")
    assert result.returncode == 1 and "does not exist" in result.stderr


def test_remove_deletes_an_owned_file_and_refuses_another_folders(
    node: Node, tmp_path: Path
) -> None:
    tiny_gguf(node.models / "mine.gguf", 1)
    shared = tiny_gguf(tmp_path / "share" / "theirs.gguf", 2)
    node.env["OFFGRID_EXTRA_MODEL_DIRS"] = str(shared.parent)
    node.registry = Registry.for_settings(load_settings(node.env))
    assert node.registry.ids() == ["mine", "theirs"]
    assert node.registry.get("theirs").owned is False
    result = node.cli("remove", "theirs")
    assert result.returncode == 1 and "does not own" in result.stderr
    assert shared.exists()
    assert node.cli("remove", "mine").returncode == 0
    assert not (node.models / "mine.gguf").exists() and node.registry.ids() == ["theirs"]


def test_a_read_only_folder_is_scanned_in_place(node: Node, tmp_path: Path) -> None:
    stick = tmp_path / "stick"
    tiny_gguf(stick / "carried.gguf", 1)
    stick.chmod(0o555)
    try:
        node.env["OFFGRID_EXTRA_MODEL_DIRS"] = str(stick)
        result = node.cli("list")
        assert result.returncode == 0 and "carried" in result.stdout
        verify = node.cli("verify", "carried")
        assert verify.returncode == 0 and "hash recorded" in verify.stdout
    finally:
        stick.chmod(0o755)


def test_read_back_compares_what_the_medium_holds_with_the_source(tmp_path: Path) -> None:
    import offgrid.atomic_files as atomic_files

    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(40 << 20))
    for mode in ("sample", "all"):
        dest = tmp_path / f"{mode}.bin"
        assert copy_hashed(src, dest, read_back=mode) == sha256(src) == sha256(dest)  # type: ignore[arg-type]
    lost = tmp_path / "lost.bin"  # a medium that dropped the end of the file
    lost.write_bytes(src.read_bytes()[: -(1 << 20)] + bytes(1 << 20))
    with src.open("rb") as a, lost.open("rb") as b:
        assert not atomic_files._same_samples(a.fileno(), b.fileno(), src.stat().st_size)
        assert atomic_files._same_samples(a.fileno(), a.fileno(), src.stat().st_size)
