"""Memory footprints and GPU layer placement, from tables and from the real models' GGUF."""

from __future__ import annotations

from pathlib import Path

import pytest

from offgrid.models.gguf_meta import read_gguf_info
from offgrid.models.starter import GEMMA, STARTER
from offgrid.placement import (
    CPU_COMPUTE,
    GPU_CONTEXT,
    GPU_HOST,
    MIB,
    Footprint,
    Memory,
    footprint,
    place,
)

# Four repeating layers of 100 MiB with 10 MiB of KV cache each, 50 MiB of input
# embeddings, a 30 MiB output layer that takes 80 MiB on the GPU (tied embeddings are
# copied there), 20 MiB of GPU compute.
FP = Footprint(50 * MIB, (100 * MIB,) * 4, 10 * MIB, 30 * MIB, 80 * MIB, 20 * MIB)
GPU_FIXED = GPU_CONTEXT + 20 * MIB


def cpu_ram(weights_mib: int, kv_layers: int) -> int:
    weights = weights_mib * MIB
    return weights + weights // 10 + kv_layers * 10 * MIB + CPU_COMPUTE


@pytest.mark.parametrize(
    ("layers", "ram", "vram"),
    [
        (0, cpu_ram(480, 4), 0),
        (1, cpu_ram(450, 4), 80 * MIB + GPU_FIXED),  # -ngl 1: only the output layer
        (2, cpu_ram(350, 3), 190 * MIB + GPU_FIXED),  # then the last repeating layer
        (5, cpu_ram(50, 0), 520 * MIB + GPU_FIXED),  # everything but the input
        (9, cpu_ram(50, 0), 520 * MIB + GPU_FIXED),  # more than there are: all
    ],
)
def test_need_follows_how_the_engine_assigns_layers(layers: int, ram: int, vram: int) -> None:
    assert FP.need(layers) == Memory(ram, vram)


@pytest.mark.parametrize(
    ("vram_budget", "requested", "expect"),
    [
        (10_000 * MIB, None, 5),  # all layers fit
        (0, None, 0),  # no GPU memory free: CPU only
        (GPU_FIXED + 79 * MIB, None, 0),  # not even the output layer
        (GPU_FIXED + 300 * MIB, None, 3),  # output + 2 layers
        (10_000 * MIB, 0, 0),  # the user asked for none
        (10_000 * MIB, 2, 2),  # ... or for exactly two
        (0, 2, 2),  # an explicit request is kept; the scheduler checks the fit
    ],
)
def test_place_puts_as_many_layers_on_the_gpu_as_fit(
    vram_budget: int, requested: int | None, expect: int
) -> None:
    placement = place(FP, Memory(1 << 40, vram_budget), gpu=True, requested=requested)
    assert placement.gpu_layers == expect
    assert placement.need == FP.need(expect) + Memory(GPU_HOST, 0)  # a GPU engine's runtime


def test_without_a_gpu_everything_is_in_ram() -> None:
    placement = place(FP, Memory(1 << 40, 1 << 40), gpu=False, requested=3)
    assert placement.gpu_layers == 0
    assert placement.need == Memory(cpu_ram(480, 4), 0)


def test_the_real_models_are_counted_layer_by_layer(model_store: Path) -> None:
    for path in (model_store / STARTER.file_name, model_store / GEMMA.file_name):
        info = read_gguf_info(path)
        assert len(info.layer_bytes) == info.block_count > 0
        parts = info.input_bytes + sum(info.layer_bytes) + info.output_bytes
        assert 0.9 * path.stat().st_size < parts <= path.stat().st_size
        assert info.tied_output  # both test models share their embeddings with the output
        assert info.vocab_size > 40_000
        fp = footprint(path.stat().st_size, info, context=1024, parallel=2)
        kv = info.head_count_kv * (info.key_length + info.value_length) * 2 * 1024 * 2
        assert (fp.layers, fp.kv_layer) == (info.layer_bytes, kv)
        assert fp.output_gpu == info.output_bytes + info.input_bytes
        everything = fp.need(fp.max_gpu_layers)
        assert everything.ram == fp.input + fp.input // 10 + CPU_COMPUTE
        assert everything.vram > sum(fp.layers)
