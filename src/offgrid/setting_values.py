"""What the text of a setting means, where it is more than a number or a path: model
aliases, per-model engine settings, a choice among words. Parsed here, checked where the
settings are loaded (``config``) and read where they are used."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from offgrid.errors import ConfigError

__all__ = ["MODEL_SETTING_KEYS", "one_of", "parse_aliases", "parse_model_settings"]

MODEL_SETTING_KEYS = {"context_size", "parallel", "threads", "gpu_layers", "extra_args"}


def parse_aliases(text: str) -> dict[str, str]:
    """``"a=x,b=y"`` → ``{"a": "x", "b": "y"}``."""
    aliases = {}
    for item in text.split(","):
        if item.strip():
            name, sep, target = item.partition("=")
            if not sep or not name.strip() or not target.strip():
                raise ConfigError(f"Model alias '{item}' must look like name=model-id")
            aliases[name.strip()] = target.strip()
    return aliases


def parse_model_settings(text: str) -> dict[str, dict[str, Any]]:
    """Per-model engine settings from JSON: ``{"model-id": {"context_size": 2048, ...}}``."""
    if not text.strip():
        return {}
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"Model settings are not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ConfigError("Model settings must map model ids to mappings of settings")
    for model_id, values in data.items():
        unknown = set(values) - MODEL_SETTING_KEYS
        if unknown:
            raise ConfigError(
                f"Unknown settings for model '{model_id}': {', '.join(sorted(unknown))} "
                f"(known: {', '.join(sorted(MODEL_SETTING_KEYS))})"
            )
    return data


def one_of(*choices: str) -> Callable[[str], None]:
    def check(value: str) -> None:
        if value.lower() not in choices:
            raise ConfigError(f"use one of {', '.join(choices)}")

    return check
