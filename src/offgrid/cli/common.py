"""What the commands share: settings from env, config file and flags; sizes for humans."""

from __future__ import annotations

from pathlib import Path

from offgrid.config import Settings, human_size, load_settings

__all__ = ["human_size", "settings_from"]


def settings_from(**flags: str | int | Path | None) -> Settings:
    """Settings from defaults < config file < env < the flags given on the command line."""
    return load_settings().with_overrides(**flags)
