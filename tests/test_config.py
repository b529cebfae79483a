"""Settings precedence: defaults < config file < env < flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from offgrid.config import load_settings
from offgrid.errors import ConfigError
from offgrid.setting_values import parse_aliases, parse_model_settings
from offgrid.units import parse_duration


def test_defaults_bind_loopback_on_11611(isolated_home: Path) -> None:
    s = load_settings({"HOME": str(isolated_home)})
    assert (s.host, s.port) == ("127.0.0.1", 11611)
    assert s.models_dir == isolated_home / ".local" / "share" / "offgrid" / "models"
    assert s.sources == {}


def test_file_then_env_then_flags(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(
        "server:\n  port: 9000\n  host: 0.0.0.0\nmodels:\n  directory: /srv/m\n"
        "inference:\n  context_size: 2048\n"
    )
    env = {"OFFGRID_CONFIG": str(cfg), "OFFGRID_PORT": "9100", "HOME": str(tmp_path)}
    s = load_settings(env)
    assert s.port == 9100 and s.sources["port"] == "env"
    assert s.host == "0.0.0.0" and s.sources["host"] == str(cfg)
    assert s.models_dir == Path("/srv/m") and s.max_context == 2048
    s2 = s.with_overrides(port=9200, host=None)
    assert s2.port == 9200 and s2.sources["port"] == "flag" and s2.host == "0.0.0.0"


def test_json_config_is_read(tmp_path: Path) -> None:
    cfg = tmp_path / "config.json"
    cfg.write_text('{"inference": {"num_threads": 3}}')
    assert load_settings({"OFFGRID_CONFIG": str(cfg)}).num_threads == 3


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("server: [1, 2", "not valid"),
        ("- a\n- b\n", "mapping"),
        ("server:\n  port: many\n", "port"),
    ],
)
def test_bad_config_files_give_clear_errors(tmp_path: Path, text: str, needle: str) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match=needle):
        load_settings({"OFFGRID_CONFIG": str(cfg)})


def test_bad_env_value_names_the_setting() -> None:
    with pytest.raises(ConfigError, match=r"port.*'x'.*env"):
        load_settings({"OFFGRID_PORT": "x"})


def test_missing_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="Cannot read"):
        load_settings({"OFFGRID_CONFIG": str(tmp_path / "absent.yaml")})


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"OFFGRID_MODEL_ALIASES": "gpt-4"}, "name=model-id"),
        ({"OFFGRID_MODEL_SETTINGS": "{not json"}, "not valid JSON"),
        ({"OFFGRID_MODEL_SETTINGS": '{"m": {"ctx": 1}}'}, "Unknown settings.*ctx"),
        ({"OFFGRID_KEEP_ALIVE": "soon"}, "not a duration"),
    ],
)
def test_scheduler_settings_are_checked(env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        load_settings(env)


def test_aliases_and_model_settings_from_the_config_file(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(
        "models:\n  aliases:\n    gpt-4o-mini: small\n"
        "  settings:\n    small:\n      context_size: 1024\n"
        "scheduler:\n  keep_alive: 10m\n  pinned_models: [small, other]\n"
    )
    s = load_settings({"OFFGRID_CONFIG": str(cfg)})
    assert parse_aliases(s.model_aliases) == {"gpt-4o-mini": "small"}
    assert parse_model_settings(s.model_settings) == {"small": {"context_size": 1024}}
    assert parse_duration(s.keep_alive) == 600 and s.pinned_models == "small,other"
