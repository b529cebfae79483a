"""``offgrid pack``: everything another x86-64 Linux box needs to install OffGrid as a
service with no network at all, written to one folder (a USB stick).

Layout::

    DIR/install.sh            deploy/pack-install.sh: checks the whole pack, then installs
    DIR/README.txt            what is in it, how to install it and check it by hand
    DIR/pack.json             versions, pythons, engine, models, sizes, what the target needs
    DIR/source/               the source tree install.sh expects (src/, deploy/, install.sh…)
    DIR/wheelhouse/           the project's wheel and every dependency for each target
                              python, and the build backend (offgrid.pack.wheels)
    DIR/engine/               the llama-server build, every CPU variant (RPATH $ORIGIN)
    DIR/models/offgrid-models/  the chosen models as a signed bundle (models.bundle)
    DIR/SHA256SUMS, SHA256SUMS.sig, signer.pub   the seal (offgrid.pack.seal)

Each part is copied into a hidden ``.NAME.partial`` folder (every file hashed in the same
pass, fsynced and sampled back from the medium) and renamed into place when whole; the
seal is removed first and written last, so an interrupted pack never looks complete. A
folder holding anything else is refused: the installer refuses any file the seal does
not name.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from offgrid.atomic_files import (
    NO_PROGRESS,
    Progress,
    atomic_writer,
    check_free_space,
    copy_hashed,
    fsync_dir,
)
from offgrid.config import Settings
from offgrid.engine.build import EngineBinary
from offgrid.errors import BadRequestError, SetupError
from offgrid.models.bundle import BUNDLE_DIR, export_bundle
from offgrid.models.keys import Keys
from offgrid.models.registry import Registry
from offgrid.pack import wheels
from offgrid.pack.parts import (
    engine_build,
    engine_files,
    engine_glibc,
    source_files,
    source_revision,
)
from offgrid.pack.readme import readme
from offgrid.pack.seal import SEAL, seal, unseal
from offgrid.units import human_size

__all__ = ["DEFAULT_PYTHONS", "PARTS", "Reporter", "make_pack"]

DEFAULT_PYTHONS = ("3.11", "3.12", "3.13")
PARTS = ("source", "wheelhouse", "engine", "models")
TOP_FILES = ("install.sh", "README.txt", "pack.json")


@dataclass(frozen=True)
class Reporter:
    """Where a pack says what it does: a line per step, what pip says now, byte progress."""

    step: Callable[[str], None] = lambda _line: None
    activity: Callable[[str], None] = lambda _line: None
    progress: Progress = field(default=NO_PROGRESS)


def make_pack(
    dest: Path,
    *,
    settings: Settings,
    registry: Registry,
    keys: Keys,
    source: Path,
    model_ids: Sequence[str] = (),
    pythons: Sequence[str] = DEFAULT_PYTHONS,
    cpu_only: bool = False,
    refresh: bool = False,
    report: Reporter = Reporter(),
) -> dict[str, Any]:
    """Write a pack to ``dest`` and return its ``pack.json``.

    ``refresh``: ask the package index even when the wheel cache could serve every python.
    """
    versions = _versions(pythons)
    engine_dir, backend = engine_build(settings, cpu_only=cpu_only)
    models = [registry.get(i) for i in model_ids]
    files = source_files(source)
    _prepare(dest)
    sums: dict[str, str] = {}

    report.step(f"== Source: {len(files)} files from {source}")
    sums |= _stage(dest, "source", [(source / f, f) for f in files], report)
    project = tomllib.loads((dest / "source" / "pyproject.toml").read_text(encoding="utf-8"))

    report.step(f"== Wheelhouse for python {', '.join(versions)}")
    wheel_sums, resolved = _wheelhouse(dest, versions, settings, refresh, report)
    sums |= wheel_sums

    report.step(f"== Engine: {backend} build {engine_dir}")
    variants = json.loads((engine_dir / "ENGINE.json").read_text()).get("cpu_variants", "all")
    if variants != "all":
        report.step(
            f"   its CPU kernels are this CPU's only ({', '.join(variants)}): it runs on CPUs "
            "like this one. For any x86-64 CPU: `offgrid setup --portable`, then pack again."
        )
    engine = engine_files(engine_dir)
    sums |= _stage(dest, "engine", engine, report)
    engine_version = _engine_runs(dest / "engine", backend)
    report.step(f"   llama-server runs from the pack: {engine_version}")

    report.step(f"== Models: {', '.join(model_ids) or 'none (add some with --models ID)'}")
    sums |= _models(dest, registry, model_ids, keys, report)

    glibc = max([engine_glibc([p for p, _ in engine]), *map(wheels.wheel_glibc, sums)])
    manifest: dict[str, Any] = {
        "format": "offgrid-pack",
        "version": 1,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "offgrid": project["project"]["version"],
        "source": source_revision(source),
        "signer": keys.public_key(),
        "pythons": {
            r.version: {
                "wheels": len(r.files),
                "resolved_with": r.resolved_with,
                "exact_markers": r.exact,
            }
            for r in resolved
        },
        "engine": {"backend": backend, "version": engine_version, "files": len(engine)},
        "models": [
            {"id": m.id, "size": m.size, "sha256": sums[f"models/{BUNDLE_DIR}/{m.id}.gguf"]}
            for m in models
        ],
        "needs": {
            "python": list(versions),
            "glibc": f"{glibc[0]}.{glibc[1]}",
            "platform": "x86_64 Linux with systemd",
            "openssl": "3",
        },
        "sizes": _sizes(dest),
    }
    installer = (dest / "source" / "deploy" / "pack-install.sh").read_text(encoding="utf-8")
    _write(dest / "install.sh", installer, mode=0o755)
    _write(dest / "README.txt", readme(manifest))
    _write(dest / "pack.json", json.dumps(manifest, indent=2) + "\n")
    report.step("== Sealing: SHA256SUMS of every file, signed with this node's key")
    seal(dest, sums, keys, report.progress)
    report.step(f"== Done: {human_size(manifest['sizes']['total'])} in {dest}")
    return manifest


def _versions(pythons: Sequence[str]) -> list[str]:
    versions = list(dict.fromkeys(v.strip() for v in pythons if v.strip()))
    for v in versions:
        major, _, minor = v.partition(".")
        if major != "3" or not minor.isdigit() or int(minor) < 11:
            raise BadRequestError(
                f"--python {v}: give versions as 3.11, 3.12…; OffGrid needs 3.11 or newer"
            )
    if not versions:
        raise BadRequestError("--python: give at least one version, e.g. 3.11")
    return versions


def _prepare(dest: Path) -> None:
    """Make ``dest`` ready for a pack: refuse foreign files, unseal, drop stale partials."""
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SetupError(f"Cannot create {dest}: {exc.strerror}") from exc
    ours = {*PARTS, *TOP_FILES, *SEAL}
    # parts being staged (.NAME.partial) and files being written (.NAME.*), each once
    stale = [
        e
        for e in dest.iterdir()
        if (e.name.startswith(".") and e.name.endswith(".partial"))
        or e.name.startswith(tuple(f".{n}." for n in ours))
    ]
    foreign = [
        e.name
        for e in dest.iterdir()
        if e.name not in ours and e not in stale and not (e.is_dir() and not any(e.iterdir()))
    ]
    if foreign:
        raise SetupError(
            f"{dest} holds {', '.join(sorted(foreign)[:5])}, which a pack does not: its "
            "installer refuses any file it does not list. Give an empty folder (e.g. a "
            "new folder on the stick)."
        )
    unseal(dest)
    (dest / "pack.json").unlink(missing_ok=True)
    for entry in stale:
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


class _OneBar:
    """The copies of many files drawn as one bar: one per part, not one per small file."""

    def __init__(self, progress: Progress, name: str, total: int) -> None:
        self.progress = progress
        progress.start(name, total)

    def start(self, name: str, total: int, done: int = 0) -> None:
        pass

    def advance(self, done: int) -> None:
        self.progress.advance(done)


def _stage(
    dest: Path, part: str, files: list[tuple[Path, str]], report: Reporter
) -> dict[str, str]:
    """Copy ``files`` (source, name in the part) into ``dest/part``; their sha256s by pack
    path. Built in a hidden folder, then renamed into place."""
    partial = dest / f".{part}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    total = sum(src.stat().st_size for src, _ in files)
    check_free_space(dest, total, what=f"the {part}")
    bar = _OneBar(report.progress, part, total)
    sums = {}
    for src, name in files:
        target = partial / name
        target.parent.mkdir(parents=True, exist_ok=True)
        sums[f"{part}/{name}"] = copy_hashed(
            src, target, overwrite=True, read_back="sample", progress=bar
        )
        target.chmod(0o755 if src.stat().st_mode & stat.S_IXUSR else 0o644)
    shutil.rmtree(dest / part, ignore_errors=True)
    os.replace(partial, dest / part)
    fsync_dir(dest)
    report.step(f"   {part}: {len(files)} files, {human_size(total)}")
    return sums


def _wheelhouse(
    dest: Path, versions: list[str], settings: Settings, refresh: bool, report: Reporter
) -> tuple[dict[str, str], list[wheels.Resolution]]:
    """Stage the wheels every target python needs (from the cache, else the index); their
    sha256s by pack path, and how each python's set was resolved."""
    cache = settings.cache_dir / "wheels"
    env = wheels.pip_environment(os.environ)
    index = env.get("PIP_INDEX_URL", "https://pypi.org/simple")
    report.step(f"   pip: {index} only (no pip config, no local sources); cache {cache}")
    source = dest / "source"
    dependencies, build = wheels.requirements(source)
    chosen: dict[str, Path] = {}
    resolved = []
    with tempfile.TemporaryDirectory(prefix="offgrid-pack-") as tmp:
        wheel = wheels.build_wheel(source, Path(tmp), cache, env, report.activity)
        report.step(f"   built {wheel.name} from the packed source")
        for version in versions:
            r = wheels.resolve(
                version,
                wheel,
                dependencies=dependencies,
                build=build,
                cache=cache,
                env=env,
                refresh=refresh,
                step=report.step,
                activity=report.activity,
            )
            report.activity("")
            got = f"{r.downloaded} downloaded" if r.downloaded else "all from the cache"
            how = "" if r.exact else f"; no python{version} here, so its markers were not"
            report.step(
                f"   python {version}: {len(r.files)} wheels ({got}), by {r.resolved_with}{how}"
            )
            resolved.append(r)
            chosen |= {p.name: p for p in r.files}
        files = [(chosen[name], name) for name in sorted(chosen)]
        return _stage(dest, "wheelhouse", files, report), resolved


def _engine_runs(folder: Path, backend: str) -> str:
    """The packed engine's version, asked of it: proof that it runs from the pack, with
    every library it loads there."""
    version = EngineBinary(folder / "bin" / "llama-server", backend, str(folder)).version()
    if version.startswith("unknown"):
        raise SetupError(f"The packed engine in {folder} does not run: {version}")
    return version


def _models(
    dest: Path, registry: Registry, ids: Sequence[str], keys: Keys, report: Reporter
) -> dict[str, str]:
    """Export the models as a signed bundle under ``dest/models``; their sha256s by pack
    path. Files of models no longer chosen go; chosen ones already there are kept."""
    folder = dest / "models"
    if not ids:
        shutil.rmtree(folder, ignore_errors=True)
        return {}
    bundle = folder / BUNDLE_DIR
    if bundle.is_dir():
        for old in bundle.glob("*.gguf"):
            if old.name.removesuffix(".gguf").removeprefix("mmproj-") not in ids:
                old.unlink()
    export_bundle(registry, list(ids), folder, keys=keys, progress=report.progress)
    sums = {}
    for line in (bundle / "SHA256SUMS").read_text(encoding="utf-8").splitlines():
        digest, _, name = line.partition("  ")
        sums[f"models/{BUNDLE_DIR}/{name}"] = digest
    size = sum(p.stat().st_size for p in bundle.iterdir())
    report.step(f"   models: {len(ids)} in a signed bundle, {human_size(size)}")
    return sums


def _sizes(dest: Path) -> dict[str, int]:
    """Bytes in each part, and their total (the files at the top add a few kB)."""
    sizes = {
        part: sum(p.stat().st_size for p in (dest / part).rglob("*") if p.is_file())
        for part in PARTS
    }
    return {**sizes, "total": sum(sizes.values())}


def _write(path: Path, text: str, *, mode: int = 0o644) -> None:
    with atomic_writer(path, mode=mode) as fh:
        fh.write(text.encode())
