"""CPU kernels that die of SIGILL are set aside, so the next start uses the next best; a
build for this CPU keeps only the variants it would choose."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from offgrid.engine.build import EngineBinary
from offgrid.engine.cpu_variants import (
    chosen_variant,
    keep_only,
    local_variants,
    set_aside_faulting_variant,
)
from offgrid.errors import SetupError


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


# A Sapphire Rapids VM: CPUID offers AMX, the kernel does not enable it (no amx_* flags)
SAPPHIRE_RAPIDS_VM = {"sse2", "sse4_2", "avx", "f16c", "fma", "avx2", "bmi2", "avx512f"}
SAPPHIRE_RAPIDS_VM |= {"avx512cd", "avx512vl", "avx512dq", "avx512bw", "avx512vbmi"}
SAPPHIRE_RAPIDS_VM |= {"avx512_vnni", "avx512_bf16"}


@pytest.mark.parametrize(
    ("flags", "kept"),
    [
        (SAPPHIRE_RAPIDS_VM, ("x64", "haswell", "icelake", "zen4")),
        (
            SAPPHIRE_RAPIDS_VM | {"amx_tile", "amx_int8"},
            ("x64", "haswell", "zen4", "sapphirerapids"),
        ),
        (
            {"sse2", "sse4_2", "avx", "f16c", "fma", "avx2", "bmi2"},
            ("x64", "piledriver", "haswell"),
        ),
        (
            {"sse2", "sse4_2", "avx", "f16c", "fma", "avx2", "bmi2", "avx_vnni"},
            ("x64", "haswell", "alderlake"),
        ),
        ({"sse2"}, ("x64",)),
        ({"neon", "asimd"}, None),  # not x86: every variant
    ],
)
def test_a_build_for_this_cpu_keeps_its_best_two_avx2_and_the_baseline(
    flags: set[str], kept: tuple[str, ...] | None
) -> None:
    assert local_variants(flags) == kept


def test_variants_left_out_are_commented_out_of_ggmls_cmake(tmp_path: Path) -> None:
    lists = tmp_path / "CMakeLists.txt"
    lists.write_text(
        "        ggml_add_cpu_backend_variant(x64)\n"
        "        ggml_add_cpu_backend_variant(haswell            SSE42 AVX F16C FMA AVX2 BMI2)\n"
        "            ggml_add_cpu_backend_variant(ivybridge      SSE42 AVX F16C)\n"
        "            ggml_add_cpu_backend_variant(armv8.2_1    DOTPROD)\n"
    )
    keep_only(lists, ("x64", "haswell"))
    lines = lists.read_text().splitlines()
    assert lines[0].strip().startswith("ggml_add") and lines[1].strip().startswith("ggml_add")
    assert lines[2].strip().startswith("# (not for this CPU) ggml_add")
    assert lines[3].strip().startswith("ggml_add")  # not an x86 variant: left as it is
    with pytest.raises(SetupError):
        keep_only(lists, ("x64", "zen4"))  # a kept variant the sources do not list
