"""Find or build the ``llama-server`` engine binary.

The sources are llama.cpp as vendored by the ``llama-cpp-python`` sdist on PyPI, pinned by
sha256 (DESIGN.md decision 2). A build lands in ``<cache>/engine/<key>/`` where the key
hashes the source and the build flags, so a machine builds each variant once; the folder
appears only when the build is complete (built beside it, then renamed).
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from offgrid.config import Settings
from offgrid.engine.cpu_variants import X86_VARIANTS, keep_only, local_variants
from offgrid.errors import ConfigError, EngineUnavailableError, SetupError
from offgrid.package_index import Progress, fetch_package_file
from offgrid.resources import gpus

__all__ = [
    "SOURCE",
    "BuildPlan",
    "EngineBinary",
    "build_engine",
    "detect_backend",
    "find_engine",
    "plan_build",
    "plans",
]


@dataclass(frozen=True)
class Source:
    project: str
    version: str
    sha256: str
    subdir: str
    llama_commit: str


SOURCE = Source(
    project="llama-cpp-python",
    version="0.3.36",
    sha256="832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e",
    subdir="vendor/llama.cpp",
    llama_commit="0c1e570",
)

TARGETS = ("llama-server", "ggml-rpc-server")

# Portable: GGML_NATIVE=ON (-march=native) died with SIGILL on other CPUs of the same
# fleet; BACKEND_DL + CPU_ALL_VARIANTS picks the best CPU kernels at run time instead.
# RPATH_USE_ORIGIN lets the binaries find their libraries after we move them; the
# prebuilt UI would be downloaded; without OpenSSL the engine cannot reach the network.
BASE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DGGML_NATIVE=OFF",
    "-DGGML_BACKEND_DL=ON",
    "-DGGML_CPU_ALL_VARIANTS=ON",
    "-DBUILD_SHARED_LIBS=ON",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DGGML_RPC=ON",
    "-DCMAKE_BUILD_RPATH_USE_ORIGIN=ON",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_OPENSSL=OFF",
)
BACKEND_FLAGS = {"cpu": (), "rocm": ("-DGGML_HIP=ON",)}


@dataclass(frozen=True)
class EngineBinary:
    """A usable engine: the llama-server path and what we know of how it was made."""

    path: Path
    backend: str
    origin: str  # "OFFGRID_LLAMA_SERVER" or the cache folder

    @property
    def rpc_server(self) -> Path:
        return self.path.with_name("ggml-rpc-server")

    def offloads(self) -> bool:
        """Whether this engine can put layers on a GPU (asks a binary of unknown make)."""
        if self.backend != "unknown":
            return self.backend in ("cuda", "rocm")
        return _lists_gpu(self.path)

    def version(self) -> str:
        """The engine's own ``--version`` line, e.g. ``version: 1 (0c1e570)``."""
        try:
            out = subprocess.run(
                [str(self.path), "--version"], capture_output=True, text=True, timeout=30
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"unknown ({exc})"
        lines = [ln for ln in (out.stdout + out.stderr).splitlines() if ln.startswith("version")]
        version = lines[0].removeprefix("version: ") if lines else "unknown"
        meta = self.path.parent.parent / "ENGINE.json"
        if meta.is_file():  # sdist builds know no git commit: say which sources they are
            src = json.loads(meta.read_text())["source"]
            version += f", llama.cpp {src['llama_commit']} from {src['project']} {src['version']}"
        return version


@functools.cache
def _lists_gpu(binary: Path) -> bool:
    """Whether ``llama-server --list-devices`` names a GPU (it lists all but the CPU)."""
    try:
        out = subprocess.run(
            [str(binary), "--list-devices"], capture_output=True, text=True, timeout=20
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    devices = re.findall(r"^\s+([A-Za-z]+)\d*: ", out.stdout, re.MULTILINE)
    return any(name.upper() not in ("CPU", "BLAS") for name in devices)  # BLAS: an accelerator


@dataclass(frozen=True)
class BuildPlan:
    """What to build and where: ``variants`` are the x86 CPU variants kept (None: all,
    the portable engine that runs on any x86-64 CPU)."""

    backend: str
    flags: tuple[str, ...]
    key: str
    folder: Path
    variants: tuple[str, ...] | None = None


def _gpu_visible() -> bool:
    return Path("/dev/nvidiactl").exists() or Path("/dev/nvidia0").exists()


def _nvcc() -> str | None:
    """nvcc on the PATH, or where the CUDA toolkit installs it by default."""
    default = Path("/usr/local/cuda/bin/nvcc")
    return shutil.which("nvcc") or (str(default) if default.is_file() else None)


def _cuda_flags() -> tuple[str, ...]:
    """CUDA flags: the toolkit's compiler, and kernels for this machine's GPUs only.

    Left alone, ggml compiles its kernels for a dozen GPU generations: hours on a small
    box. The GPUs that are here are the ones the engine will run on; a build forced on a
    machine without a GPU keeps ggml's list.
    """
    flags = ["-DGGML_CUDA=ON"]
    nvcc = _nvcc()
    if nvcc and not shutil.which("nvcc"):
        flags.append(f"-DCMAKE_CUDA_COMPILER={nvcc}")
    archs = sorted({g.compute_capability.replace(".", "") for g in gpus()})
    if archs:
        flags.append(f"-DCMAKE_CUDA_ARCHITECTURES={';'.join(archs)}")
    return tuple(flags)


def detect_backend(*, cpu_only: bool = False, cuda: bool = False) -> str:
    """``cuda`` when nvcc is installed and an NVIDIA GPU is visible, ``rocm`` likewise, else cpu.

    A CUDA build on a box with nvcc but no GPU would take most of an hour on two cores
    and run on the CPU anyway, so the GPU must be there too; ``cuda=True`` forces it.
    """
    if cpu_only:
        return "cpu"
    if cuda or (_nvcc() and _gpu_visible()):
        return "cuda"
    if shutil.which("hipcc") and Path("/dev/kfd").exists():
        return "rocm"
    return "cpu"


def plan_build(cache_dir: Path, backend: str, *, portable: bool = True) -> BuildPlan:
    """The build of ``backend``: with every CPU variant (``portable``), or only those for
    this CPU (``cpu_variants.local_variants``; the same as portable where it cannot tell)."""
    flags = BASE_FLAGS + (_cuda_flags() if backend == "cuda" else BACKEND_FLAGS[backend])
    variants = None if portable else local_variants()
    marks = (SOURCE.sha256, *flags, *([f"variants={','.join(variants)}"] if variants else []))
    key = hashlib.sha256("\n".join(marks).encode()).hexdigest()[:16]
    return BuildPlan(backend, flags, key, cache_dir / "engine" / f"{backend}-{key}", variants)


# What a CPU build took on 2 cores here (bench/first_run.py, docs/decisions.md): the server,
# libllama and the rest, and each CPU variant of ggml (all 14: 642 s to a first token;
# this CPU's 4: 463 s)
_BUILD_BASE_S, _VARIANT_S = 330, 18


def build_estimate(plan: BuildPlan, jobs: int) -> str:
    """How long the build will take, as measured here, scaled to ``jobs`` cores."""
    if plan.backend == "cuda":
        return "tens of minutes (CUDA kernels for each GPU architecture)"
    variants = len(plan.variants) if plan.variants else len(X86_VARIANTS)
    seconds = (_BUILD_BASE_S + _VARIANT_S * variants) * 2 / max(1, jobs)
    return f"about {max(1, round(seconds / 60))} minutes on {jobs} cores"


def plans(cache_dir: Path, backend: str) -> list[BuildPlan]:
    """The builds of ``backend`` that serve this machine, the portable one first (it was
    the only kind before: caches that hold one need no new build)."""
    both = [plan_build(cache_dir, backend), plan_build(cache_dir, backend, portable=False)]
    return both[:1] if both[0].folder == both[1].folder else both


def _complete(folder: Path) -> bool:
    return (folder / "ENGINE.json").is_file() and (folder / "bin" / "llama-server").is_file()


def _built(folder: Path, *keys: str) -> str:
    """A field of a build folder's ENGINE.json (``"source", "sha256"``), or "" without one."""
    try:
        value = json.loads((folder / "ENGINE.json").read_text())
        for key in keys:
            value = value[key]
        return str(value)
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def find_engine(settings: Settings) -> EngineBinary:
    """The engine to run: ``OFFGRID_LLAMA_SERVER``, else the best completed build in the cache."""
    if settings.llama_server:
        path = Path(settings.llama_server).expanduser()
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise ConfigError(f"OFFGRID_LLAMA_SERVER={path} is not an executable file")
        backend = _built(path.parent.parent, "backend") or "unknown"  # one of our builds, moved
        return EngineBinary(path, backend, "OFFGRID_LLAMA_SERVER")
    preferred = detect_backend()
    for backend in dict.fromkeys((preferred, "cpu")):
        folders = [plan.folder for plan in plans(settings.cache_dir, backend)]
        if backend != "cpu":  # a GPU build whose key the GPUs cannot confirm right now
            folders += sorted(folders[0].parent.glob(f"{backend}-*"))  # (driver not up yet)
        for folder in folders:
            if _complete(folder) and _built(folder, "source", "sha256") == SOURCE.sha256:
                return EngineBinary(folder / "bin" / "llama-server", backend, str(folder))
    raise EngineUnavailableError(
        "No llama-server engine is installed. Run `offgrid setup` (builds it once, "
        "about 7 minutes on 2 cores) or set OFFGRID_LLAMA_SERVER to an existing binary."
    )


@contextmanager
def _lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _extract(archive: Path, dest: Path, subdir: str) -> Path:
    """Unpack the llama.cpp part of the sdist; ``filter='data'`` keeps paths inside ``dest``."""
    with tarfile.open(archive) as tar:
        top = tar.getnames()[0].split("/")[0]
        prefix = f"{top}/{subdir}/"
        members = [m for m in tar.getmembers() if m.name.startswith(prefix)]
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, members=members, filter="data")
        else:  # Python before 3.11.4 (Debian 12's 3.11.2): the same refusals, by hand
            for m in members:
                if not (m.isfile() or m.isdir()) or ".." in Path(m.name).parts:
                    raise SetupError(f"{archive.name} holds an unsafe entry: {m.name}")
            tar.extractall(dest, members=members)  # noqa: S202 - every member checked above
    return dest / top / subdir


_PERCENT = re.compile(r"^\[\s*(\d+)%\]\s*(.*)")


def _run_logged(
    argv: list[str], log: Path, step: Callable[[str, int | None], None], what: str
) -> None:
    """Run a build command, appending its output to ``log`` and reporting ``[ NN%]`` lines."""
    with log.open("a") as fh:
        fh.write(f"\n$ {' '.join(argv)}\n")
        fh.flush()
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            fh.write(line)
            match = _PERCENT.match(line)
            if match:
                step(f"{what}: {match.group(2).strip()[:70]}", int(match.group(1)))
        code = proc.wait()
    if code != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise SetupError(f"{what} failed (exit {code}). Full log: {log}\n{tail}")


def build_engine(
    settings: Settings,
    *,
    backend: str,
    portable: bool = False,
    jobs: int | None = None,
    step: Callable[[str, int | None], None] = lambda _msg, _pct: None,
    progress: Progress | None = None,
) -> EngineBinary:
    """Build llama-server for ``backend`` into the cache unless such a build exists: for
    this CPU (a portable build serves it too), or ``portable`` (every CPU variant)."""
    found = plans(settings.cache_dir, backend)
    plan = found[0] if portable else found[-1]
    with _lock(plan.folder.with_suffix(".lock")):
        for done in found if not portable else [plan]:
            if _complete(done.folder):
                return EngineBinary(done.folder / "bin" / "llama-server", backend, str(done.folder))
        for tool in ("cmake", "c++"):
            if not shutil.which(tool):
                raise SetupError(f"Building the engine needs `{tool}`: install cmake and g++.")
        step("Fetching llama.cpp sources", None)
        archive = fetch_package_file(
            SOURCE.project,
            SOURCE.version,
            ".tar.gz",
            settings.cache_dir / "downloads",
            sha256=SOURCE.sha256,
            progress=progress,
        )
        work = plan.folder.with_name(plan.folder.name + ".work")
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        log = plan.folder.with_name(plan.folder.name + ".build.log")
        log.write_text(f"OffGrid engine build {plan.key} ({backend})\n")
        step("Unpacking sources", None)
        src = _extract(archive, work / "src", SOURCE.subdir)
        if plan.variants is not None:
            keep_only(src / "ggml" / "src" / "CMakeLists.txt", plan.variants)
        build = work / "build"
        n = str(jobs or os.cpu_count() or 2)
        step(f"Configuring (cmake); the build takes {build_estimate(plan, int(n))}", None)
        _run_logged(
            ["cmake", "-S", str(src), "-B", str(build), *plan.flags], log, step, "Configure"
        )
        _run_logged(
            ["cmake", "--build", str(build), "-j", n, "--target", *TARGETS], log, step, "Build"
        )
        step("Installing into the cache", 100)
        staged = work / "install"
        (staged / "bin").mkdir(parents=True)
        for item in (build / "bin").iterdir():
            if item.is_symlink() or item.is_file():  # keep lib*.so.0 -> lib*.so.0.x links
                shutil.copy2(item, staged / "bin" / item.name, follow_symlinks=False)
        meta = {
            "source": SOURCE.__dict__,
            "backend": backend,
            "flags": plan.flags,
            "cpu_variants": plan.variants or "all",
        }
        (staged / "ENGINE.json").write_text(json.dumps(meta, indent=2))
        shutil.rmtree(plan.folder, ignore_errors=True)
        os.replace(staged, plan.folder)
        shutil.rmtree(work, ignore_errors=True)
        return EngineBinary(plan.folder / "bin" / "llama-server", backend, str(plan.folder))
