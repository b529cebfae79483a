"""The engine's CPU kernels: which variant ggml picks here, and setting aside one that faults.

The portable engine carries one ``libggml-cpu-<variant>.so`` per CPU family and ggml loads
the one whose ``ggml_backend_score()`` is highest for the CPU it runs on. That score reads
CPUID, which can promise more than the machine delivers: on a Sapphire Rapids virtual
machine the AMX variant died with SIGILL on its first ``tilezero``, in every engine, while
the next best variant ran. When an engine dies of SIGILL, the variant it used is renamed
``*.so.faulted`` (ggml only loads ``*.so``), so the next start picks the next best one;
renaming it back undoes it.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

__all__ = ["chosen_variant", "set_aside_faulting_variant"]

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
