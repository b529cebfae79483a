"""The engine's CPU kernels: which variant ggml picks here, and setting aside one that faults.

The portable engine carries one ``libggml-cpu-<variant>.so`` per CPU family and ggml loads
the one whose ``ggml_backend_score()`` is highest for the CPU it runs on. That score reads
CPUID, which can promise more than the machine delivers: on a Sapphire Rapids virtual
machine the AMX variant died with SIGILL on its first ``tilezero``, in every engine, while
the next best variant ran. When an engine dies of SIGILL, the variant it used is renamed
``*.so.faulted`` (ggml only loads ``*.so``), so the next start picks the next best one;
renaming it back undoes it.

Each x86 variant costs about 18 s of the engine's build on 2 cores, all fourteen about four
minutes. ``offgrid setup`` builds only those this CPU can run and would choose (the
best two, AVX2 and the baseline: ``local_variants``); ``offgrid setup --portable`` builds
all of them, for packs that go to other machines.
"""

from __future__ import annotations

import logging
import platform
import re
import subprocess
import sys
from pathlib import Path

from offgrid.errors import SetupError

__all__ = ["chosen_variant", "keep_only", "local_variants", "set_aside_faulting_variant"]

log = logging.getLogger("offgrid.engine")

# Run in a child so that loading ggml's libraries never touches the server's own process.
_SCORE = """
import ctypes, sys
for path in sys.argv[1:]:
    try:
        lib = ctypes.CDLL(path)
        lib.ggml_backend_score.restype = ctypes.c_int
        print(lib.ggml_backend_score(), path)
    except (OSError, AttributeError):
        print(0, path)
"""


def chosen_variant(bin_dir: Path) -> Path | None:
    """The CPU variant ggml loads from ``bin_dir`` on this machine (None: a single-variant
    build, or none scores above 0)."""
    variants = sorted(bin_dir.glob("libggml-cpu-*.so"))
    if len(variants) < 2:
        return None
    try:
        out = subprocess.run(
            [sys.executable, "-c", _SCORE, *map(str, variants)],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    scores = [(int(s), Path(p)) for s, p in (line.split(" ", 1) for line in out.splitlines())]
    best_score, best = max(scores, default=(0, Path()))
    return best if best_score > 0 else None


def set_aside_faulting_variant(bin_dir: Path) -> Path | None:
    """Rename the variant ggml picks here out of its way, after an engine died of SIGILL;
    the renamed file, or None when there is no other variant to fall back to."""
    chosen = chosen_variant(bin_dir)
    if chosen is None:
        return None
    target = chosen.with_name(chosen.name + ".faulted")
    try:
        chosen.rename(target)
    except OSError as exc:
        log.warning("cannot set aside the CPU variant %s: %s", chosen.name, exc.strerror)
        return None
    log.warning(
        "the engine died of SIGILL with the CPU kernels %s: set aside as %s, so engines use "
        "the next best variant for this CPU (rename it back to undo)",
        chosen.name,
        target.name,
    )
    return target


# ggml's x86 CPU variants and the CPU features each needs, as /proc/cpuinfo names them
# (ggml/src/CMakeLists.txt; its AVX512 is F, CD, VL, DQ and BW together)
_AVX2 = ("sse4_2", "avx", "f16c", "fma", "avx2", "bmi2")
_AVX512 = (*_AVX2, "avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw")
X86_VARIANTS: dict[str, tuple[str, ...]] = {
    "x64": (),
    "sse42": ("sse4_2",),
    "sandybridge": ("sse4_2", "avx"),
    "ivybridge": ("sse4_2", "avx", "f16c"),
    "piledriver": ("sse4_2", "avx", "f16c", "fma"),
    "haswell": _AVX2,
    "skylakex": _AVX512,
    "cannonlake": (*_AVX512, "avx512vbmi"),
    "cascadelake": (*_AVX512, "avx512_vnni"),
    "icelake": (*_AVX512, "avx512vbmi", "avx512_vnni"),
    "cooperlake": (*_AVX512, "avx512_vnni", "avx512_bf16"),
    "zen4": (*_AVX512, "avx512vbmi", "avx512_vnni", "avx512_bf16"),
    "alderlake": (*_AVX2, "avx_vnni"),
    "sapphirerapids": (
        *_AVX512,
        "avx512vbmi",
        "avx512_vnni",
        "avx512_bf16",
        "amx_tile",
        "amx_int8",
    ),
}


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return set(line.partition(":")[2].split())


def local_variants(flags: set[str] | None = None) -> tuple[str, ...] | None:
    """The x86 variants worth building for this CPU: the two it can run with the most
    features (the best, and the next one should the best fault as AMX did), AVX2 and the
    baseline; None where that cannot be told (not x86-64, no /proc/cpuinfo): build all."""
    if flags is None:
        if platform.machine().lower() not in ("x86_64", "amd64"):
            return None
        flags = _cpu_flags()
    if "sse2" not in flags:  # every x86-64 CPU has it: these are not x86 flags
        return None
    fits = [name for name, needs in X86_VARIANTS.items() if set(needs) <= flags]
    best = sorted(fits, key=lambda name: len(X86_VARIANTS[name]), reverse=True)[:2]
    keep = {"x64", *best, *(["haswell"] if "haswell" in fits else [])}
    return tuple(name for name in X86_VARIANTS if name in keep)


_VARIANT_LINE = re.compile(r"^(\s*)(ggml_add_cpu_backend_variant\((\w+)\b)", re.MULTILINE)


def keep_only(cmakelists: Path, keep: tuple[str, ...]) -> None:
    """Comment out the x86 variants of ggml's CMakeLists.txt that ``keep`` leaves out."""
    text = cmakelists.read_text()
    found = {m.group(3) for m in _VARIANT_LINE.finditer(text)}
    if not set(keep) <= found:
        raise SetupError(f"{cmakelists} does not list the CPU variants {sorted(set(keep) - found)}")

    def line(match: re.Match[str]) -> str:
        name = match.group(3)
        dropped = name in X86_VARIANTS and name not in keep
        return (
            f"{match.group(1)}# (not for this CPU) {match.group(2)}" if dropped else match.group(0)
        )

    cmakelists.write_text(_VARIANT_LINE.sub(line, text))
