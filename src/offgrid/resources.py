"""Readings of the machine: CPU, RAM, GPU."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import psutil

__all__ = ["SystemFacts", "system_facts"]


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
