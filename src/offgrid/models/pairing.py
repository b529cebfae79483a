"""Which vision projector (mmproj file) belongs to which model: by their names.

A projector is never a model of its own; it gives vision to the model beside it. In one
folder, a model takes the projector whose name, without ``mmproj`` and its quantization
(``mmproj-SmolVLM-256M-Instruct-f16`` → ``SmolVLM-256M-Instruct``), begins its id,
preferring the longest common prefix of the two names (``…-Q8_0`` with ``mmproj-…-Q8_0``);
one projector may serve several quantizations of a model. Failing that, a folder with one
model and one projector pairs them (``mmproj-model-f16.gguf``, as many Hub repos name it),
and in a folder known to hold one model's quantizations (a Hub repository) a lone
projector serves each model the names leave without one.
What OffGrid writes itself is named ``mmproj-<model id>.gguf``, which pairs by name.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from offgrid.models.quantization import quant_of

__all__ = ["pair", "projector_name", "projector_named"]

_MMPROJ = re.compile(r"[-_.]*mmproj[-_.]*", re.IGNORECASE)


def projector_named(file_name: str) -> bool:
    """Whether a file's name says it is a projector (``mmproj-….gguf``, ``…-mmproj-f16.gguf``)."""
    return "mmproj" in file_name.lower()


def projector_name(model_id: str) -> str:
    """The file name OffGrid gives the projector of ``model_id``."""
    return f"mmproj-{model_id}.gguf"


def _stem(name: str) -> str:
    """A projector's name without ``mmproj``, ``.gguf`` and case."""
    return _MMPROJ.sub("-", name.removesuffix(".gguf")).strip("-").lower()


def _base(stem: str) -> str:
    """The model name a projector's stem gives: the part before its quantization."""
    quant = quant_of(stem)
    if quant is not None:
        stem = stem[: stem.rfind(quant.lower())]
    return stem.rstrip("-_.")


def _common(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def pair(
    model_ids: Sequence[str], projectors: Sequence[str], *, one_model: bool = False
) -> dict[str, str]:
    """Model id → the file name of its projector, for the models and projector file names
    of one folder (the rule is in the module's docstring); ``one_model``: the folder holds
    one model's quantizations."""
    stems = {name: _stem(name) for name in sorted(projectors)}
    found: dict[str, str] = {}
    for model_id in model_ids:
        low = model_id.lower()
        scored = [
            (_common(stem, low), name)
            for name, stem in stems.items()
            if (base := _base(stem)) and low.startswith(base)
        ]
        if scored:
            best = max(score for score, _ in scored)
            found[model_id] = next(name for score, name in scored if score == best)
    if len(projectors) == 1 and (one_model or (not found and len(model_ids) == 1)):
        found = {model_id: found.get(model_id, projectors[0]) for model_id in model_ids}
    return found
