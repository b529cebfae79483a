"""Readings of the machine: CPU, RAM, GPU."""

from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

__all__ = [
    "Gpu",
    "SystemFacts",
    "available_memory",
    "gpu_free_memory",
    "gpus",
    "machine_fits",
    "system_facts",
]


@dataclass(frozen=True)
class Gpu:
    """One NVIDIA GPU as the driver (NVML) sees it now."""

    index: int
    name: str
    total: int
    free: int
    compute_capability: str  # "9.0"


@dataclass(frozen=True)
class SystemFacts:
    cpu_model: str
    cpu_cores: int
    ram_total: int
    ram_available: int
    gpus: tuple[Gpu, ...]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


@functools.cache
def _nvml() -> Any:
    """The NVML module once the driver library loaded, or None (no NVIDIA driver)."""
    try:
        import pynvml  # type: ignore[import-untyped,unused-ignore]

        pynvml.nvmlInit()
    except Exception:  # ImportError, or NVMLError when there is no driver or no GPU
        return None
    return pynvml


def _visible(count: int) -> list[int]:
    """Device indices that CUDA_VISIBLE_DEVICES leaves to the engines (all if unset)."""
    mask = os.environ.get("CUDA_VISIBLE_DEVICES")
    if mask is None:
        return list(range(count))
    if not mask.strip():
        return []  # all hidden
    wanted = [int(p) for p in mask.split(",") if p.strip().isdigit()]
    return [i for i in wanted if i < count] if wanted else list(range(count))  # UUIDs: all


def gpus() -> list[Gpu]:
    """The NVIDIA GPUs the engines may use, with their free memory; [] without any."""
    nvml: Any = _nvml()
    if nvml is None:
        return []
    found = []
    with contextlib.suppress(nvml.NVMLError):
        for index in _visible(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            mem = nvml.nvmlDeviceGetMemoryInfo(handle)
            major, minor = nvml.nvmlDeviceGetCudaComputeCapability(handle)
            name = nvml.nvmlDeviceGetName(handle)
            name = name.decode() if isinstance(name, bytes) else str(name)
            found.append(Gpu(index, name, int(mem.total), int(mem.free), f"{major}.{minor}"))
    return found


def gpu_free_memory() -> int:
    """Free memory of all usable GPUs together (llama-server splits layers across them)."""
    return sum(g.free for g in gpus())


def system_facts() -> SystemFacts:
    mem = psutil.virtual_memory()
    return SystemFacts(
        cpu_model=_cpu_model(),
        cpu_cores=psutil.cpu_count(logical=True) or 1,
        ram_total=mem.total,
        ram_available=mem.available,
        gpus=tuple(gpus()),
    )


def machine_fits(need: int, facts: SystemFacts | None = None) -> bool:
    """Whether a model needing ``need`` bytes can run on this machine at all: in nine
    tenths of its RAM (the rest is the system's), or on its GPUs."""
    facts = facts or system_facts()
    vram = sum(g.total for g in facts.gpus)
    return need <= facts.ram_total * 9 // 10 or need <= vram


def available_memory() -> int:
    """RAM the system can give a new engine without swapping."""
    return int(psutil.virtual_memory().available)
