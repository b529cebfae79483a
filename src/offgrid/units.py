"""Sizes and durations as people write them (``12GiB``, ``5m``, ``30d``) and as they read
them (``98.4 MB``): for settings, flags, request fields and messages."""

from __future__ import annotations

import math

from offgrid.errors import ConfigError

__all__ = ["human_size", "parse_duration", "parse_size"]


def parse_size(value: str | int) -> int:
    """Bytes from ``1073741824``, ``"1024MiB"``, ``"12GiB"``, ``"12GB"``, ``"512M"``."""
    text = str(value).strip().upper().removesuffix("B").removesuffix("I")
    scale = {"K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}.get(text[-1:], 1)
    number = text[:-1] if scale > 1 else text
    try:
        size = float(number) * scale
    except ValueError:
        size = math.nan
    if not math.isfinite(size):  # "inf" and "nan" are floats, not sizes
        raise ConfigError(f"'{value}' is not a size: use bytes or 512MiB, 12GiB") from None
    if size < 0:
        raise ConfigError(f"'{value}' is not a size: it is negative")
    return int(size)


def human_size(n: float) -> str:
    """``98362432`` → ``"98.4 MB"`` (decimal units, as disks are sold)."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def parse_duration(value: str | float) -> float:
    """Seconds from ``300``, ``"300s"``, ``"5m"``, ``"1h"``, ``"30d"``; negative means forever."""
    text = str(value).strip().lower()
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
    for suffix in ("ms", "s", "m", "h", "d"):
        if text.endswith(suffix) and text[: -len(suffix)].strip():
            number, scale = text[: -len(suffix)], units[suffix]
            break
    else:
        number, scale = text, 1.0
    try:
        seconds = float(number) * scale
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds):  # "inf" and "nan" are floats, not durations
        raise ConfigError(
            f"'{value}' is not a duration: use seconds or 30s, 5m, 1h (0 = now, -1 = never)"
        ) from None
    return seconds
