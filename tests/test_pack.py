"""``offgrid pack`` and the pack's own install.sh: the air-gapped installer (issue 15, item 6).

One pack is made for the module, for the python the containers run (/usr/bin/python3) and
with the starter model; the wheel downloads are cached under the per-user cache
(``<cache>/wheels``), so only a first run reaches the package index. The tests check its
layout, seal and manifest on this machine, then boot real systemd containers
(tests/nspawn.py) to check that a changed pack is refused before anything is installed,
and that an intact one installs with no network at all and answers a chat.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import REAL_ENV, link_models
from nspawn import Machine, local_pip_sources, nspawn_available
from offgrid.config import load_settings
from offgrid.engine.build import EngineBinary
from offgrid.models.keys import Keys
from offgrid.models.starter import STARTER

NO_MACHINE = nspawn_available()
needs_machine = pytest.mark.skipif(NO_MACHINE is not None, reason=f"no container: {NO_MACHINE}")
pytestmark = pytest.mark.timeout(900)

ROOT = Path(__file__).resolve().parents[1]
CACHE = load_settings(REAL_ENV).cache_dir
SEAL = {"SHA256SUMS", "SHA256SUMS.sig", "signer.pub"}
TOP = {"install.sh", "README.txt", "pack.json", *SEAL, "source", "wheelhouse", "engine", "models"}
# What an install creates; absent before (hidden in the container if this host has them).
INSTALLED = (
    "/opt/offgrid",
    "/etc/offgrid",
    "/var/lib/offgrid",
    "/usr/local/bin/offgrid",
    "/etc/systemd/system/offgrid-llm.service",
)
PACK_IN = "/mnt/pack"


def _target_python() -> str:
    """The version of the python install.sh builds the service on (the containers')."""
    done = subprocess.run(
        ["/usr/bin/python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True,
        text=True,
        check=False,
    )
    return (
        done.stdout.strip()
        if done.returncode == 0
        else f"{sys.version_info[0]}.{sys.version_info[1]}"
    )


PYTHON = _target_python()


@dataclass(frozen=True)
class Pack:
    path: Path
    env: dict[str, str]
    output: str
    seconds: float


def _offgrid(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "offgrid", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=850,
    )


@pytest.fixture(scope="module")
def pack(
    tmp_path_factory: pytest.TempPathFactory, engine_binary: EngineBinary, model_store: Path
) -> Pack:
    """A pack of this checkout for one python, with the starter model, made by the CLI."""
    tmp = tmp_path_factory.mktemp("pack")
    models = link_models(model_store, tmp / "models", {STARTER.file_name: STARTER.file_name})
    env = {k: v for k, v in REAL_ENV.items() if not k.startswith(("OFFGRID_", "XDG_"))}
    env |= {"HOME": str(tmp / "home"), "XDG_DATA_HOME": str(tmp / "data")}
    env["OFFGRID_MODELS_DIR"] = str(models)
    env["OFFGRID_CACHE_DIR"] = str(CACHE)  # the engine build, and the wheels across runs
    dest = tmp / "stick" / "offgrid-pack"
    started = time.monotonic()
    done = _offgrid(env, "pack", str(dest), "--python", PYTHON, "--models", STARTER.model_id)
    seconds = time.monotonic() - started
    assert done.returncode == 0, done.stdout + done.stderr
    print(f"\noffgrid pack --python {PYTHON}: {seconds:.1f} s")
    return Pack(dest, env, done.stdout + done.stderr, seconds)


def _listed(pack: Path) -> dict[str, str]:
    lines = (pack / "SHA256SUMS").read_text().splitlines()
    return {line[66:]: line[:64] for line in lines}


def _files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if not p.is_dir()}


def test_pack_holds_source_wheels_engine_and_model_and_says_its_size(pack: Pack) -> None:
    p = pack.path
    assert {e.name for e in p.iterdir()} == TOP
    assert re.search(r"total\s+\d+(\.\d+)? MB", pack.output), pack.output
    assert os.access(p / "install.sh", os.X_OK)
    assert (p / "install.sh").read_text() == (ROOT / "deploy" / "pack-install.sh").read_text()

    source = _files(p / "source")
    for needed in ("install.sh", "uninstall.sh", "pyproject.toml", "README.md"):
        assert needed in source
    assert "src/offgrid/__init__.py" in source and "deploy/offgrid-llm.service" in source
    assert not {s for s in source if s.startswith(("tests/", ".git", ".venv", "bench/"))}
    assert not [s for s in source if "__pycache__" in s]

    # Every dependency and the build backend, as wheels for this python (no sdists).
    wheels = {w.name for w in (p / "wheelhouse").iterdir()}
    assert all(w.endswith(".whl") for w in wheels), wheels
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    wanted = project["project"]["dependencies"] + project["build-system"]["requires"]
    tag = "cp" + PYTHON.replace(".", "")
    for req in [*wanted, "offgrid"]:
        name = re.split(r"[<>=!~;\[ ]", req)[0].lower().replace("-", "_")
        assert any(w.lower().startswith(name + "-") for w in wheels), f"no wheel for {req}"
    for compiled in ("uvloop", "httptools", "pydantic_core", "aiohttp", "yarl"):
        assert any(w.startswith(f"{compiled}-") and f"-{tag}-" in w for w in wheels), compiled

    # The engine: plain files (no links, which a FAT stick cannot hold), every CPU variant.
    engine = p / "engine" / "bin"
    assert not [e for e in engine.iterdir() if e.is_symlink()]
    assert len(list(engine.glob("libggml-cpu-*.so"))) >= 10
    assert os.access(engine / "llama-server", os.X_OK) and (p / "engine" / "ENGINE.json").is_file()

    bundle = p / "models" / "offgrid-models"
    assert (bundle / STARTER.file_name).stat().st_size == STARTER.size
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["models"][0]["sha256"] == STARTER.sha256 and "signature" in manifest


def test_pack_seal_lists_every_file_and_openssl_verifies_its_signature(
    pack: Pack, tmp_path: Path
) -> None:
    p = pack.path
    listed = _listed(p)
    assert set(listed) == _files(p) - SEAL
    check = subprocess.run(
        ["sha256sum", "-c", "--strict", "--quiet", "SHA256SUMS"], cwd=p, capture_output=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    openssl = ["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", "signer.pub", "-rawin"]
    verify = subprocess.run(
        [*openssl, "-in", "SHA256SUMS", "-sigfile", "SHA256SUMS.sig"],
        cwd=p,
        capture_output=True,
        text=True,
    )
    assert verify.returncode == 0 and "Signature Verified Successfully" in verify.stdout
    # The signer is this node's key, as `offgrid signing-key` prints it.
    node = Keys(load_settings(pack.env).data_dir / "keys").public_key()
    assert json.loads((p / "pack.json").read_text())["signer"] == node
    # install.sh prints the signer and, given a key (--key or OFFGRID_PACK_KEY), takes no other.
    verify_only = ["bash", str(p / "install.sh"), "--verify-only"]
    pinned = {**pack.env, "OFFGRID_PACK_KEY": node}
    done = subprocess.run(verify_only, capture_output=True, text=True, env=pinned)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (
        f"signed by the node key {node}" in done.stdout and "the key given: accepted" in done.stdout
    )
    other = Keys(tmp_path / "other").public_key()
    done = subprocess.run([*verify_only, "--key", other], capture_output=True, text=True)
    assert done.returncode == 1 and f"not by the key given ({other})" in done.stderr


def test_pack_json_describes_the_pack(pack: Pack) -> None:
    info = json.loads((pack.path / "pack.json").read_text())
    assert info["format"] == "offgrid-pack" and info["offgrid"] == "0.1.0"
    assert list(info["pythons"]) == [PYTHON] and info["needs"]["python"] == [PYTHON]
    assert info["pythons"][PYTHON]["exact_markers"] is True
    assert info["engine"]["backend"] == "cpu" and "0c1e570" in info["engine"]["version"]
    assert info["models"] == [
        {"id": STARTER.model_id, "size": STARTER.size, "sha256": STARTER.sha256}
    ]
    assert re.fullmatch(r"2\.\d+", info["needs"]["glibc"])
    sizes = info["sizes"]
    assert sizes["models"] > STARTER.size and sizes["wheelhouse"] > 10_000_000
    assert sizes["total"] == sum(v for k, v in sizes.items() if k != "total")


def test_pack_again_takes_every_wheel_from_the_cache(pack: Pack, tmp_path: Path) -> None:
    again = tmp_path / "again"
    shutil.copytree(pack.path, again, copy_function=os.link)  # rewritten files get new inodes
    done = _offgrid(pack.env, "pack", str(again), "--python", PYTHON, "--models", STARTER.model_id)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "(all from the cache)" in done.stderr and "asking the package index" not in done.stderr
    assert subprocess.run(["bash", str(again / "install.sh"), "--verify-only"]).returncode == 0


def test_pack_refuses_a_folder_holding_other_files(pack: Pack, tmp_path: Path) -> None:
    (tmp_path / "photo.jpg").write_bytes(b"\xff\xd8")
    done = _offgrid(pack.env, "pack", str(tmp_path), "--python", PYTHON)
    assert done.returncode == 1 and "photo.jpg" in done.stderr and "empty folder" in done.stderr
    assert not (tmp_path / "wheelhouse").exists()


# -- in containers ------------------------------------------------------------------------------


def _tampered(pack: Path, dest: Path) -> dict[str, str]:
    """Copies of the pack, each changed one way; the message each must be refused with."""
    listed = _listed(pack)
    wheel = next(n for n in listed if n.startswith("wheelhouse/pydantic_core-"))
    model = f"models/offgrid-models/{STARTER.file_name}"
    cases = {
        "wheel": f"{wheel}: FAILED",
        "engine": "engine/bin/llama-server: FAILED",
        "model": f"{model}: FAILED",
        "added": "not listed in SHA256SUMS were added to the pack: wheelhouse/extra-1.0",
        "sums": "the signature does not match",
        "unsealed": "SHA256SUMS.sig is missing",
    }
    flips = {"wheel": wheel, "engine": "engine/bin/llama-server", "model": model}
    for case in cases:
        copy = dest / case
        shutil.copytree(pack, copy, copy_function=os.link)
        if case in flips:  # a fresh copy of the file, one byte flipped
            target = copy / flips[case]
            data = bytearray(target.read_bytes())
            data[len(data) // 2] ^= 0x01
            target.unlink()
            target.write_bytes(bytes(data))
        elif case == "added":
            (copy / "wheelhouse" / "extra-1.0-py3-none-any.whl").write_bytes(b"PK")
        elif case == "sums":
            sums = copy / "SHA256SUMS"
            text = sums.read_text()
            sums.unlink()
            sums.write_text(text.replace(listed[wheel], "0" * 64))
        else:
            (copy / "SHA256SUMS.sig").unlink()
    return cases


@needs_machine
def test_a_changed_pack_is_refused_before_anything_is_installed(pack: Pack, tmp_path: Path) -> None:
    cases = _tampered(pack.path, tmp_path / "tampered")
    with Machine(
        tmp_path / "machine",
        bind_ro={str(tmp_path / "tampered"): "/mnt/tampered"},
        hide=(*local_pip_sources(), *INSTALLED),
    ) as m:
        for case, message in cases.items():
            done = m.run(f"/mnt/tampered/{case}/install.sh --cpu-only", check=False)
            out = done.stdout + done.stderr
            assert done.returncode != 0, f"{case}: not refused:\n{out}"
            assert message in done.stderr and "REFUSED" in done.stderr, f"{case}:\n{out}"
            assert "== Installing" not in done.stdout, f"{case}:\n{out}"
            left = [p for p in INSTALLED if m.run(f"test -e {p}", check=False).returncode == 0]
            assert not left, f"{case}: the refused install made {left}"
            assert m.run("id offgrid", check=False).returncode != 0, f"{case}: made the user"


@pytest.fixture
def airgapped(pack: Pack, tmp_path: Path) -> Iterator[Machine]:
    """A booted machine with no route out, no local pip source, no cache: the pack alone."""
    hide = (*local_pip_sources(), *INSTALLED, str(CACHE), "/root/.local/share/offgrid")
    with Machine(
        tmp_path / "machine", bind_ro={str(pack.path): PACK_IN}, network=False, hide=hide
    ) as m:
        assert m.run("ip -4 route show").stdout.strip() == "", "a route out"
        assert "exists: True" not in m.run("python3 -m pip config debug").stdout
        assert m.run("ls /opt/wheels /root/.cache/pip", check=False).returncode != 0
        yield m


@needs_machine
def test_the_pack_installs_with_no_network_and_answers_a_chat(
    pack: Pack, airgapped: Machine
) -> None:
    m = airgapped
    started = time.monotonic()
    done = m.run(f"{PACK_IN}/install.sh --cpu-only", timeout=600)
    installed = time.monotonic() - started
    for checked in ("== Signature", "== Every file listed", "== Every file's sha256"):
        assert checked in done.stdout, done.stdout
    assert "packages: from /mnt/pack/wheelhouse only (no network)" in done.stdout, done.stdout
    assert "== Done in" in done.stdout, done.stdout + done.stderr
    assert m.run("systemctl is-active offgrid-llm").stdout.strip() == "active"
    assert (
        m.run(f"test -f /var/lib/offgrid/models/{STARTER.file_name}", check=False).returncode == 0
    )
    body = {
        "model": STARTER.model_id,
        "messages": [{"role": "user", "content": "Say hello."}],
        "max_tokens": 16,
        "temperature": 0,
    }
    reply = m.run(
        "curl -sS --fail-with-body --max-time 120 http://127.0.0.1:11611/v1/chat/completions "
        f"-H 'Content-Type: application/json' -d '{json.dumps(body)}'",
        timeout=150,
    )
    answered = time.monotonic() - started
    answer = json.loads(reply.stdout)
    assert answer["model"] == STARTER.model_id
    assert answer["choices"][0]["message"]["content"].strip(), answer
    print(
        f"\nair-gapped install from the pack: {installed:.1f} s, to a chat answer {answered:.1f} s"
    )
