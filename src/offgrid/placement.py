"""Memory a model needs, and where its layers go: pure functions over GGUF metadata.

A model's ``Footprint`` counts, layer by layer, what llama-server allocates for it: the
weights of each repeating layer and its share of the KV cache, the input embeddings
(always on the CPU), the output layer, the compute buffers, and a vision model's
projector (on the GPU once anything runs there, as llama-server puts it). ``place`` then
chooses how many layers go to the GPU, the way llama-server's ``-ngl N`` assigns them:
the output layer first, then repeating layers from the last one down. Everything not on
the GPU stays in RAM. The scheduler calls ``place`` with the memory it can make free.
"""

from __future__ import annotations

from dataclasses import dataclass

from offgrid.models.gguf_meta import GGUFInfo

__all__ = ["MIB", "Footprint", "Memory", "Placement", "footprint", "place", "rough_need"]

MIB = 1024 * 1024

# Allowances checked against what the engines really took (docs/decisions.md): compute
# buffers on the CPU, a share of the CPU-side weights, and what a GPU engine costs on top
# of its buffers (the CUDA context in VRAM, the runtime's libraries and pinned memory in RAM).
CPU_COMPUTE = 96 * MIB
GPU_CONTEXT = 704 * MIB  # measured 690 MiB on an H200 with CUDA 13 (docs/decisions.md)
GPU_HOST = 384 * MIB  # measured ~470 MiB of RSS beyond the buffers, less the 96 above
UBATCH = 512  # llama-server's default physical batch: its compute buffers scale with it


@dataclass(frozen=True)
class Memory:
    """Bytes of RAM and of GPU memory (all GPUs together)."""

    ram: int = 0
    vram: int = 0

    def __add__(self, other: Memory) -> Memory:
        return Memory(self.ram + other.ram, self.vram + other.vram)

    def __sub__(self, other: Memory) -> Memory:
        return Memory(self.ram - other.ram, self.vram - other.vram)

    def fits(self, budget: Memory) -> bool:
        return self.ram <= budget.ram and self.vram <= budget.vram

    def describe(self) -> str:
        gib = 1024**3
        text = f"{self.ram / gib:.1f} GiB of RAM"
        return text + (f" and {self.vram / gib:.1f} GiB of GPU memory" if self.vram else "")


@dataclass(frozen=True)
class Footprint:
    """What one model needs for a given context and slot count, in placeable parts."""

    input: int  # token embeddings: the engine keeps them on the CPU
    layers: tuple[int, ...]  # the weights of each repeating layer
    kv_layer: int  # the KV cache of one layer (on the same device as the layer)
    output_cpu: int  # the output layer when it stays on the CPU
    output_gpu: int  # ... on the GPU (tied embeddings are copied there)
    gpu_compute: int  # compute buffers on the GPU once anything runs there
    projector: int = 0  # the vision projector's weights: on the GPU once anything runs there

    @property
    def max_gpu_layers(self) -> int:
        """``-ngl`` that puts everything on the GPU: the repeating layers + the output."""
        return len(self.layers) + 1

    def need(self, gpu_layers: int) -> Memory:
        """RAM and VRAM with ``gpu_layers`` layers on the GPU (output first, as -ngl does)."""
        g = max(0, min(gpu_layers, self.max_gpu_layers))
        cpu_layers = self.layers[: len(self.layers) - max(0, g - 1)]
        weights = self.input + sum(cpu_layers) + (self.output_cpu if g == 0 else 0)
        ram = weights + weights // 10 + len(cpu_layers) * self.kv_layer + CPU_COMPUTE
        if g == 0:
            return Memory(ram + self.projector, 0)
        on_gpu = self.layers[len(cpu_layers) :]
        vram = sum(on_gpu) + len(on_gpu) * self.kv_layer + self.output_gpu + self.projector
        return Memory(ram, vram + self.gpu_compute + GPU_CONTEXT)


@dataclass(frozen=True)
class Placement:
    """Where a model runs: layers on the GPU (``-ngl``) and the memory that takes."""

    gpu_layers: int
    need: Memory


def footprint(
    file_size: int, gguf: GGUFInfo | None, *, context: int, parallel: int, projector: int = 0
) -> Footprint:
    """The footprint of a model at ``context`` tokens per request for each of ``parallel`` slots
    (and its ``projector``'s bytes).

    The KV cache is f16 for every layer (models with sliding-window layers use less, so
    this errs high); the per-request context is capped at the model's trained context, as
    ``build_argv`` does. A file whose metadata could not be read counts as one layer.
    """
    if gguf is None or not gguf.layer_bytes:
        return Footprint(0, (file_size,), 0, 0, 0, 0, projector)
    per_slot = min(context, gguf.context_length) if gguf.context_length else context
    kv_layer = gguf.head_count_kv * (gguf.key_length + gguf.value_length) * 2
    kv_layer *= per_slot * parallel
    output_gpu = gguf.output_bytes + (gguf.input_bytes if gguf.tied_output else 0)
    width = gguf.vocab_size + 3 * gguf.feed_forward_length + 6 * gguf.embedding_length
    return Footprint(
        input=gguf.input_bytes,
        layers=gguf.layer_bytes,
        kv_layer=kv_layer,
        output_cpu=gguf.output_bytes,
        output_gpu=output_gpu,
        gpu_compute=4 * UBATCH * width,
        projector=projector,
    )


def place(fp: Footprint, budget: Memory, *, gpu: bool, requested: int | None = None) -> Placement:
    """The placement of a model within ``budget``.

    With no usable GPU everything is in RAM. ``requested`` is the user's own ``-ngl``;
    None puts as many layers on the GPU as its share of the budget holds.
    A GPU engine takes ``GPU_HOST`` more RAM for its runtime, whatever its layers.
    The result may not fit the budget: the caller checks ``need.fits(budget)``.
    """
    if not gpu:
        return Placement(0, fp.need(0))
    layers = fp.max_gpu_layers if requested is None else min(requested, fp.max_gpu_layers)
    while requested is None and layers > 0 and fp.need(layers).vram > budget.vram:
        layers -= 1
    return Placement(layers, fp.need(layers) + Memory(GPU_HOST, 0))


def rough_need(file_size: int) -> int:
    """RAM for a model known only by its file size (on the Hub, in the catalog): what
    ``footprint`` counts for its weights, plus a tenth of them again for the KV cache at
    the default context (about what Llama-3.2-1B and Llama-3.1-8B take at Q4_K_M and
    4096 tokens)."""
    return footprint(file_size, None, context=0, parallel=1).need(0).ram + file_size // 10
