"""A local stand-in for the HuggingFace Hub: the endpoints ``huggingface_hub`` and OffGrid's
downloader call, served from real files on loopback (``HF_ENDPOINT=hub.url``).

- ``GET /api/models``: search (``search``, ``filter``, ``sort``, ``limit``), newest-Hub shape;
- ``GET /api/models/{repo}[/revision/{rev}]``: model info, with sibling sizes and LFS sha256
  when ``blobs=true``;
- ``GET|HEAD /{repo}/resolve/{rev}/{file}``: the file, with HTTP ``Range``.

Faults for tests: ``cut_after`` (close the connection once that many bytes of a file went
out; with ``down_after_cut`` files then answer 503), ``corrupt_at`` (serve one byte
flipped). A ``gated`` repo's files need the token (401),
as on the Hub; its info is public.
``served`` counts the bytes of each file sent (``sending``: transfers still going);
``requests`` records what came in.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class Repo:
    files: dict[str, Path]
    downloads: int = 0
    likes: int = 0
    last_modified: str = "2026-01-01T00:00:00.000Z"
    tags: list[str] = field(default_factory=lambda: ["gguf"])
    gated: bool = False
    sha256: dict[str, str] = field(default_factory=dict)

    def digest(self, name: str) -> str:
        if name not in self.sha256:
            h = hashlib.sha256()
            with self.files[name].open("rb") as fh:
                while block := fh.read(1 << 20):
                    h.update(block)
            self.sha256[name] = h.hexdigest()
        return self.sha256[name]


class FakeHub:
    """Start with ``with FakeHub() as hub:``; add repos with ``hub.add(...)``."""

    def __init__(self, token: str = "hf_test_token") -> None:
        self.repos: dict[str, Repo] = {}
        self.token = token
        self.cut_after: dict[str, int] = {}  # file name -> bytes, for the next request only
        self.corrupt_at: dict[str, int] = {}  # file name -> offset of a flipped byte
        self.rate: int | None = None  # bytes per second, to make a transfer last
        self.down_after_cut = False  # after a cut, files answer 503 (the link stays down)
        self.down = False
        self.served: dict[str, int] = {}
        self.sending = 0  # file transfers in progress
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def add(self, repo_id: str, files: dict[str, Path], **kw: Any) -> Repo:
        self.repos[repo_id] = Repo(files=dict(files), **kw)
        return self.repos[repo_id]

    def __enter__(self) -> FakeHub:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- what the endpoints answer ----------------------------------------------------
    def info(self, repo_id: str, blobs: bool) -> dict[str, Any]:
        repo = self.repos[repo_id]
        siblings: list[dict[str, Any]] = [{"rfilename": "README.md"}]
        for name, path in sorted(repo.files.items()):
            sib: dict[str, Any] = {"rfilename": name}
            if blobs:
                size = path.stat().st_size
                sib.update(
                    size=size,
                    blobId=hashlib.sha1(name.encode()).hexdigest(),
                    lfs={"size": size, "sha256": repo.digest(name), "pointerSize": 134},
                )
            siblings.append(sib)
        return {
            "_id": repo_id,
            "id": repo_id,
            "modelId": repo_id,
            "author": repo_id.split("/")[0],
            "sha": COMMIT,
            "lastModified": repo.last_modified,
            "private": False,
            "gated": "auto" if repo.gated else False,
            "downloads": repo.downloads,
            "likes": repo.likes,
            "tags": repo.tags,
            "library_name": "gguf",
            "siblings": siblings,
        }

    def search(self, query: dict[str, list[str]]) -> list[dict[str, Any]]:
        words = query.get("search", [""])[0].lower()
        tags = set(query.get("filter", []))
        hits = [
            r for r, repo in self.repos.items() if words in r.lower() and tags <= set(repo.tags)
        ]
        sort = query.get("sort", [""])[0]
        key = {"downloads": "downloads", "likes": "likes", "lastModified": "last_modified"}
        if sort in key:
            hits.sort(key=lambda r: getattr(self.repos[r], key[sort]), reverse=True)
        limit = int(query.get("limit", ["1000"])[0])
        out = []
        for r in hits[:limit]:
            info = self.info(r, blobs=False)
            out.append(
                {
                    k: info[k]
                    for k in (
                        "_id",
                        "id",
                        "modelId",
                        "likes",
                        "downloads",
                        "tags",
                        "lastModified",
                        "library_name",
                    )
                }
            )
        return out


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _json(
            self, body: Any, status: int = 200, headers: dict[str, str] | None = None
        ) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def _not_found(self, what: str) -> None:
            self._json({"error": f"{what} not found"}, 404, {"X-Error-Code": "RepoNotFound"})

        def do_HEAD(self) -> None:
            self.do_GET()

        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            path = unquote(parts.path)
            query = parse_qs(parts.query)
            with hub.lock:
                hub.requests.append(
                    {
                        "path": path,
                        "query": query,
                        "range": self.headers.get("Range"),
                        "auth": self.headers.get("Authorization"),
                    }
                )
            if path == "/api/models":
                self._json(hub.search(query))
                return
            m = re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/[^/]+)?", path)
            if m:
                if m.group(1) not in hub.repos:
                    self._not_found(m.group(1))
                    return
                self._json(
                    hub.info(
                        m.group(1), query.get("blobs") == ["true"] or query.get("blobs") == ["True"]
                    )
                )
                return
            m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
            if m and m.group(1) in hub.repos and m.group(3) in hub.repos[m.group(1)].files:
                repo = hub.repos[m.group(1)]
                if self._allowed(repo):
                    self._file(repo, m.group(3))
                return
            self._not_found(path)

        def _allowed(self, repo: Repo) -> bool:
            if repo.gated and self.headers.get("Authorization") != f"Bearer {hub.token}":
                self._json({"error": "gated"}, 401, {"X-Error-Code": "GatedRepo"})
                return False
            return True

        def _file(self, repo: Repo, name: str) -> None:
            if hub.down:
                self._json({"error": "unavailable"}, 503)
                return
            path = repo.files[name]
            size = path.stat().st_size
            start, end = 0, size - 1
            rng = self.headers.get("Range")
            status = 200
            if rng:
                m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng)
                if not m or int(m.group(1)) >= size:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{size}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                start = int(m.group(1))
                end = int(m.group(2)) if m.group(2) else size - 1
                status = 206
            self.send_response(status)
            self.send_header("Content-Length", str(end - start + 1))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("ETag", f'"{repo.digest(name)}"')
            self.send_header("X-Linked-Etag", f'"{repo.digest(name)}"')
            self.send_header("X-Linked-Size", str(size))
            self.send_header("X-Repo-Commit", COMMIT)
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            self.end_headers()
            if self.command == "HEAD":
                return
            with hub.lock:
                cut = hub.cut_after.pop(name, None)
                flip = hub.corrupt_at.get(name)
            self._send(path, name, start, end + 1, cut, flip)

        def _send(
            self, path: Path, name: str, start: int, stop: int, cut: int | None, flip: int | None
        ) -> None:
            if cut is not None:
                stop = min(stop, max(start, cut))
            with hub.lock:
                hub.sending += 1
            try:
                self._send_file(path, name, start, stop, flip)
            finally:
                with hub.lock:
                    hub.sending -= 1
            if cut is not None:
                hub.down = hub.down_after_cut
                self.close_connection = True
                self.connection.shutdown(2)

        def _send_file(
            self, path: Path, name: str, start: int, stop: int, flip: int | None
        ) -> None:
            with path.open("rb") as fh:
                if flip is None and hub.rate is None:  # the fast path: the kernel copies
                    offset = start
                    while offset < stop:
                        sent = os.sendfile(
                            self.connection.fileno(), fh.fileno(), offset, stop - offset
                        )
                        if sent == 0:
                            break
                        offset += sent
                        self._count(name, sent)
                else:
                    self._send_slowly(fh, name, start, stop, flip)

        def _send_slowly(self, fh: Any, name: str, start: int, stop: int, flip: int | None) -> None:
            import time

            fh.seek(start)
            offset = start
            began = time.monotonic()
            while offset < stop:
                block = bytearray(fh.read(min(1 << 16, stop - offset)))
                if flip is not None and offset <= flip < offset + len(block):
                    block[flip - offset] ^= 0xFF
                self.wfile.write(block)
                offset += len(block)
                self._count(name, len(block))
                if hub.rate:
                    ahead = (offset - start) / hub.rate - (time.monotonic() - began)
                    if ahead > 0:
                        time.sleep(ahead)

        def _count(self, name: str, n: int) -> None:
            with hub.lock:
                hub.served[name] = hub.served.get(name, 0) + n

    return Handler
