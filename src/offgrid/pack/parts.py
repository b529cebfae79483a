"""What goes into a pack besides the wheels: the source tree and the engine build, as lists
of (file here, name in the pack), and the file names a pack may hold.

A pack holds plain files only, under names its installer can check with a regular
expression: a USB stick's FAT holds no symbolic links, and ``install.sh`` refuses any
entry of the pack that ``SHA256SUMS`` does not name, which is simplest to trust when no
name needs quoting.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

from offgrid.config import Settings
from offgrid.engine.build import detect_backend, plans
from offgrid.errors import SetupError

__all__ = [
    "SAFE_NAME",
    "SOURCE_ITEMS",
    "engine_build",
    "engine_files",
    "engine_glibc",
    "source_files",
    "source_revision",
]

# What install.sh copies from its own folder (its SOURCE_FILES).
SOURCE_ITEMS = ("src", "pyproject.toml", "README.md", "deploy", "install.sh", "uninstall.sh")
# Letters, digits and ._+@=- in each part of the path, no part starting with a dot; the
# same expression is in deploy/pack-install.sh.
SAFE_NAME = re.compile(r"[A-Za-z0-9_+@=-][A-Za-z0-9._+@=-]*(/[A-Za-z0-9_+@=-][A-Za-z0-9._+@=-]*)*")


def source_files(root: Path) -> list[str]:
    """The files of the source tree at ``root`` that install.sh needs, relative to it.

    In a git checkout: what git would commit (tracked and untracked, not ignored), so
    build outputs and caches stay out; otherwise a walk that skips hidden names and
    ``__pycache__``.
    """
    missing = [item for item in SOURCE_ITEMS if not (root / item).exists()]
    if missing:
        raise SetupError(
            f"{root} is not an OffGrid source tree: {', '.join(missing)} missing. "
            "Give the checkout to carry with --source."
        )
    names = _git_files(root)
    if names is None:
        names = []
        for item in SOURCE_ITEMS:
            names += [item] if (root / item).is_file() else []
            for folder, dirs, files in os.walk(root / item):
                dirs[:] = [d for d in dirs if not d.startswith(".") and d != "__pycache__"]
                names += [str((Path(folder) / f).relative_to(root)) for f in files]
    kept = []
    for name in sorted(set(names)):
        path = root / name
        hidden = any(part.startswith(".") or part == "__pycache__" for part in Path(name).parts)
        if not hidden and path.is_file() and not path.is_symlink():
            kept.append(name)
    return kept


def _git_files(root: Path) -> list[str] | None:
    if not (root / ".git").exists():
        return None
    argv = ["git", "-C", str(root), "ls-files", "-z", "--cached", "--others"]
    try:
        done = subprocess.run(
            [*argv, "--exclude-standard", "--", *SOURCE_ITEMS],
            capture_output=True,
            timeout=60,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None  # no git, or a checkout git refuses (another owner): walk it instead
    return [n for n in done.stdout.decode().split("\0") if n]


def source_revision(root: Path) -> dict[str, object]:
    """The git commit of the source tree and whether its files differ from it ({} without
    git)."""
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--", *SOURCE_ITEMS],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"commit": head, "modified": bool(status.strip())}


def engine_build(settings: Settings, *, cpu_only: bool) -> tuple[Path, str]:
    """The engine build folder to carry and its backend.

    The build ``OFFGRID_LLAMA_SERVER`` names, when it is one (a node installed as a
    service runs the engine its installer copied), else this machine's preferred build
    in the cache (CUDA where there is one and ``cpu_only`` is not set), else the CPU one;
    of each, the portable build (every CPU variant) before the one for this CPU only.
    """
    folders = []
    if settings.llama_server:
        folders.append(Path(settings.llama_server).expanduser().parent.parent)
    backends = ["cpu"] if cpu_only else [detect_backend(), "cpu"]
    for backend in dict.fromkeys(backends):
        folders += [plan.folder for plan in plans(settings.cache_dir, backend)]
    for folder in folders:
        try:
            backend = str(json.loads((folder / "ENGINE.json").read_text())["backend"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if (folder / "bin" / "llama-server").is_file() and not (cpu_only and backend != "cpu"):
            return folder, backend
    raise SetupError(
        f"No {'CPU ' if cpu_only else ''}engine build in {settings.cache_dir / 'engine'}: "
        "build it first with `offgrid setup --cpu-only --portable --no-model` (once, about "
        "10 minutes on 2 cores), then pack again."
    )


def engine_files(folder: Path) -> list[tuple[Path, str]]:
    """(file, name in the pack) for an engine build, plain files only.

    A library that the build reaches through links (libllama.so → libllama.so.0 →
    libllama.so.0.5.0) is carried once, under the name of the link that points at the
    file itself: by the convention CMake follows that is its SONAME, the name the
    binaries ask the loader for; the other names are only used when linking. CPU kernels
    set aside on this machine (``engine.cpu_variants``) stay set aside in the pack: an
    installed engine's folder is read-only to the service, which could not set them aside.
    """
    links = {p.name: os.readlink(p) for p in folder.rglob("*") if p.is_symlink()}
    soname = {target: name for name, target in links.items() if target not in links}
    files = []
    for path in sorted(folder.rglob("*")):
        if path.is_symlink() or not path.is_file():
            continue
        rel = path.relative_to(folder)
        files.append((path, str(rel.with_name(soname.get(path.name, path.name)))))
    return files


def engine_glibc(files: list[Path]) -> tuple[int, int]:
    """The newest glibc symbol version the engine's binaries and libraries ask for."""
    found = {(2, 17)}
    for path in files:
        with path.open("rb") as fh:
            if fh.read(4) != b"\x7fELF":
                continue
            data = fh.read()
        found.update((2, int(m)) for m in re.findall(rb"GLIBC_2\.(\d+)", data))
    return max(found)
