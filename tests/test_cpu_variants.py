"""CPU kernels that die of SIGILL are set aside, so the next start uses the next best."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from offgrid.engine.build import EngineBinary
from offgrid.engine.cpu_variants import chosen_variant, set_aside_faulting_variant


def test_the_chosen_variant_is_set_aside_and_the_next_best_taken(
    tmp_path: Path, engine_binary: EngineBinary
) -> None:
    source = engine_binary.path.parent
    variants = sorted(source.glob("libggml-cpu-*.so"))
    if len(variants) < 2:
        pytest.skip("a single-variant engine build (GGML_CPU_ALL_VARIANTS off)")
    for lib in source.glob("libggml*.so*"):  # the variants and the base library they need
        shutil.copy(lib, tmp_path / lib.name, follow_symlinks=True)
    first = chosen_variant(tmp_path)
    assert first is not None and first.parent == tmp_path
    faulted = set_aside_faulting_variant(tmp_path)
    assert faulted == first.with_name(first.name + ".faulted") and faulted.is_file()
    second = chosen_variant(tmp_path)
    assert second is not None and second != first
