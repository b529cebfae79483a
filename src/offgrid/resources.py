"""Readings of the machine: CPU, RAM, GPU."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import psutil

from offgrid.models.gguf_meta import GGUFInfo

__all__ = [
    "MIB",
    "SystemFacts",
    "available_memory",
    "estimate_model_memory",
    "system_facts",
]


@dataclass(frozen=True)
class SystemFacts:
    cpu_model: str
    cpu_cores: int
    ram_total: int
    ram_available: int
    gpu: str | None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def _gpu() -> str | None:
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip().replace("\n", "; ") or None


def system_facts() -> SystemFacts:
    mem = psutil.virtual_memory()
    return SystemFacts(
        cpu_model=_cpu_model(),
        cpu_cores=psutil.cpu_count(logical=True) or 1,
        ram_total=mem.total,
        ram_available=mem.available,
        gpu=_gpu(),
    )


MIB = 1024 * 1024


def estimate_model_memory(
    file_size: int, gguf: GGUFInfo | None, *, context: int, parallel: int
) -> int:
    """Bytes an engine needs for a model: weights + f16 KV cache + compute buffers.

    The KV cache holds ``context`` tokens for each of the ``parallel`` slots (capped at the
    model's trained context, as ``build_argv`` does); the compute overhead is a fixed
    allowance plus a share of the weights, which covered what llama-server's RSS showed
    for the test models (docs/decisions.md).
    """
    per_slot = context
    if gguf is not None and gguf.context_length:
        per_slot = min(context, gguf.context_length)
    kv = 0
    if gguf is not None:
        per_token = gguf.block_count * gguf.head_count_kv * (gguf.key_length + gguf.value_length)
        kv = per_token * 2 * per_slot * parallel
    return file_size + kv + 96 * MIB + file_size // 10


def available_memory() -> int:
    """RAM the system can give a new engine without swapping."""
    return int(psutil.virtual_memory().available)
