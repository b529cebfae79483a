"""Quantization levels: how to read one from a file name, what each costs and gives.

The bits per weight are those of whole llama.cpp files (embeddings and output kept at
higher precision included), from ``llama-quantize``'s own table for Llama-3-8B; quality
is its perplexity increase there, in words. A model's file size at a level is about
parameters * bits / 8.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["LEVELS", "Level", "level", "quant_of", "size_at"]


@dataclass(frozen=True)
class Level:
    name: str
    bits: float  # per weight, over the whole file
    quality: str


LEVELS = (
    Level("Q2_K", 3.17, "smallest usable; clearly worse answers"),
    Level("Q3_K_S", 3.65, "very small; noticeable quality loss"),
    Level("Q3_K_M", 4.00, "small; quality loss you may notice"),
    Level("Q3_K_L", 4.31, "small; a little better than Q3_K_M"),
    Level("IQ4_XS", 4.46, "about Q4_K_S quality in less space; slower on some CPUs"),
    Level("Q4_0", 4.64, "legacy 4-bit; fast on ARM CPUs"),
    Level("Q4_K_S", 4.67, "good balance, slightly smaller than Q4_K_M"),
    Level("Q4_K_M", 4.90, "recommended: the usual balance of size and quality"),
    Level("Q4_1", 5.11, "legacy 4-bit, a little better than Q4_0"),
    Level("Q5_K_S", 5.57, "high quality"),
    Level("Q5_K_M", 5.70, "high quality; close to the original"),
    Level("Q6_K", 6.57, "near-original quality"),
    Level("Q8_0", 8.51, "practically the original; twice Q4's memory"),
    Level("F16", 16.0, "the original weights in half precision"),
    Level("BF16", 16.0, "the original weights in bfloat16"),
)
_BY_NAME = {lv.name: lv for lv in LEVELS}

_QUANT = re.compile(
    r"(?:^|[-._/])((?:I?Q\d_(?:K(?:_[SMLX]L?)?|\d|[A-Z]{1,3}))|TQ\d_\d|BF16|F16|F32|MXFP4)(?=[-._]|$)",
    re.IGNORECASE,
)


def quant_of(file_name: str) -> str | None:
    """The quantization a GGUF file name states (``Llama-3.2-1B-Instruct-Q4_K_M.gguf`` →
    ``Q4_K_M``), or None."""
    found = _QUANT.findall(file_name)
    return found[-1].upper() if found else None


def level(name: str) -> Level | None:
    return _BY_NAME.get(name.upper())


def size_at(parameters: int, name: str) -> int | None:
    """About how many bytes a model of ``parameters`` takes at level ``name``."""
    lv = level(name)
    return None if lv is None else int(parameters * lv.bits / 8)
