"""One Settings object: defaults < config file (YAML/JSON) < ``OFFGRID_*`` env < flags.

Every setting is declared once in ``FIELDS`` with its env name, its key in the config
file, its default and its meaning, so ``offgrid config show`` can print them all with
the place each value came from. Settings are read from an injected mapping (tests
pass a dict), never from ``os.environ`` behind the caller's back.

Longer than 400 lines because every setting is declared here, once, with its meaning: the
list is the module's job, and splitting it would hide settings from one another.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from offgrid.errors import ConfigError
from offgrid.setting_values import one_of, parse_aliases, parse_model_settings
from offgrid.units import parse_duration, parse_size

__all__ = [
    "FIELDS",
    "Setting",
    "Settings",
    "config_file_path",
    "load_settings",
]


@dataclass(frozen=True)
class Setting:
    """How one setting is named in the environment and the config file, and what it means."""

    name: str
    env: str
    file_key: str
    help: str


def _home(env: Mapping[str, str] | None = None) -> Path:
    """The user's home: ``HOME`` of the settings' environment (the process's by default)."""
    return Path((os.environ if env is None else env).get("HOME") or Path.home())


def _data_home(env: Mapping[str, str]) -> Path:
    return Path(env.get("XDG_DATA_HOME") or _home(env) / ".local" / "share")


def _cache_home(env: Mapping[str, str]) -> Path:
    return Path(env.get("XDG_CACHE_HOME") or _home(env) / ".cache")


@dataclass(frozen=True)
class Settings:
    """Everything OffGrid can be told; see ``FIELDS`` for names and meanings."""

    host: str = "127.0.0.1"
    port: int = 11611
    ollama_port: int = 0
    models_dir: Path = field(default_factory=lambda: _data_home(os.environ) / "offgrid" / "models")
    extra_model_dirs: str = ""
    import_dirs: str = ""
    data_dir: Path = field(default_factory=lambda: _data_home(os.environ) / "offgrid")
    cache_dir: Path = field(default_factory=lambda: _cache_home(os.environ) / "offgrid")
    llama_server: str = ""
    num_threads: int = 0
    max_context: int = 4096
    parallel: int = 4
    gpu_layers: int = -1
    gpu_memory: str = "0"
    memory: str = "0"
    load_timeout: float = 300.0
    max_request_bytes: int = 32 * 1024 * 1024
    log_level: str = "info"
    log_format: str = "text"
    log_prompts: bool = False
    max_loaded_models: int = 3
    max_queue: int = 64
    cpu_turns: bool = True
    keep_alive: str = "5m"
    pinned_models: str = ""
    model_aliases: str = ""
    model_settings: str = ""
    insecure_no_auth: bool = False
    api_key: str = field(default="", repr=False)  # a secret: never in a repr or a log
    p2p: bool = False
    p2p_host: str = "0.0.0.0"
    p2p_port: int = 11612
    p2p_discovery: bool = True
    p2p_token: str = field(default="", repr=False)  # a secret, like api_key
    node_name: str = ""
    federation: bool = False
    rpc_worker: bool = False
    split_models: str = ""
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)

    def with_overrides(self, **values: Any) -> Settings:
        """Return a copy with command-line flags applied (``None`` means not given)."""
        given = {k: v for k, v in values.items() if v is not None}
        if not given:
            return self
        coerced = {k: _coerce(k, v) for k, v in given.items()}
        sources = dict(self.sources) | dict.fromkeys(given, "flag")
        return replace(self, **coerced, sources=sources)

    @property
    def reach_host(self) -> str:
        """Where this box reaches its own API: a wildcard bind is reached on loopback."""
        return "127.0.0.1" if self.host in ("", "0.0.0.0", "::") else self.host

    @property
    def model_folders(self) -> list[Path]:
        """The models folder (where imports go) and then the extra folders, in order."""
        extra = self.extra_model_dirs.split(os.pathsep)
        return [self.models_dir, *(Path(os.path.expanduser(p)) for p in extra if p.strip())]

    @property
    def import_roots(self) -> list[Path]:
        """Where an API import may read: ``import_dirs``, else removable media and drops."""
        given = [Path(os.path.expanduser(p)) for p in self.import_dirs.split(os.pathsep) if p]
        return given or [Path("/media"), Path("/mnt"), Path("/run/media"), self.data_dir / "import"]

    def as_rows(self) -> list[tuple[str, str, str, str]]:
        """(env name, value, source, meaning) for every setting, for display."""
        return [
            (s.env, self._shown(s.name), self.sources.get(s.name, "default"), s.help)
            for s in FIELDS
        ]

    def _shown(self, name: str) -> str:
        value = str(getattr(self, name))
        return "(set, hidden)" if name in SECRETS and value else value


FIELDS: tuple[Setting, ...] = (
    Setting("host", "OFFGRID_HOST", "server.host", "Bind address (loopback by default)"),
    Setting("port", "OFFGRID_PORT", "server.port", "HTTP port of the API"),
    Setting(
        "ollama_port",
        "OFFGRID_OLLAMA_PORT",
        "server.ollama_port",
        "A second port for the same API, e.g. 11434 for tools that assume Ollama's (0: off)",
    ),
    Setting("models_dir", "OFFGRID_MODELS_DIR", "models.directory", "Folder of *.gguf models"),
    Setting(
        "extra_model_dirs",
        "OFFGRID_EXTRA_MODEL_DIRS",
        "models.extra_directories",
        "More model folders, scanned in place (read-only is fine), separated by ':'",
    ),
    Setting(
        "import_dirs",
        "OFFGRID_IMPORT_DIRS",
        "models.import_directories",
        "Folders an API import may read, ':'-separated (/media:/mnt:/run/media:<data>/import)",
    ),
    Setting(
        "data_dir",
        "OFFGRID_DATA_DIR",
        "data.directory",
        "Registry of models (hashes, origins) and the node's signing keys",
    ),
    Setting("cache_dir", "OFFGRID_CACHE_DIR", "cache.directory", "Engine builds and downloads"),
    Setting(
        "llama_server",
        "OFFGRID_LLAMA_SERVER",
        "engine.binary",
        "Use this llama-server binary instead of building one",
    ),
    Setting("num_threads", "OFFGRID_NUM_THREADS", "inference.num_threads", "CPU threads (0=auto)"),
    Setting(
        "max_context",
        "OFFGRID_MAX_CONTEXT",
        "inference.context_size",
        "Context window per request, in tokens (capped at the model's)",
    ),
    Setting(
        "parallel",
        "OFFGRID_PARALLEL",
        "inference.parallel",
        "Requests one engine runs at once (llama-server -np)",
    ),
    Setting(
        "gpu_layers",
        "OFFGRID_GPU_LAYERS",
        "inference.gpu_layers",
        "Layers to put on the GPU: -1 = as many as fit, 0 = none, N = N",
    ),
    Setting(
        "gpu_memory",
        "OFFGRID_GPU_MEMORY",
        "inference.gpu_memory",
        "Most GPU memory all engines together may take: 12GiB, 8000MiB (0 = all that is free)",
    ),
    Setting(
        "memory",
        "OFFGRID_MEMORY",
        "inference.memory",
        "Most RAM all engines together may take: 8GiB (0 = all that is available)",
    ),
    Setting(
        "load_timeout",
        "OFFGRID_LOAD_TIMEOUT",
        "inference.load_timeout",
        "Seconds a model may take to load",
    ),
    Setting(
        "max_request_bytes",
        "OFFGRID_MAX_REQUEST_BYTES",
        "server.max_request_bytes",
        "Largest request body accepted",
    ),
    Setting("log_level", "OFFGRID_LOG_LEVEL", "logging.level", "debug, info, warning or error"),
    Setting(
        "log_format",
        "OFFGRID_LOG_FORMAT",
        "logging.format",
        "text (journald-friendly) or json (one object per line, for collectors)",
    ),
    Setting(
        "log_prompts",
        "OFFGRID_LOG_PROMPTS",
        "logging.prompts",
        "Log each request's body at debug (off: prompts never reach the logs)",
    ),
    Setting(
        "max_loaded_models",
        "OFFGRID_MAX_LOADED_MODELS",
        "scheduler.max_loaded_models",
        "Most models loaded at once (memory permitting)",
    ),
    Setting(
        "max_queue",
        "OFFGRID_MAX_QUEUE",
        "scheduler.max_queue",
        "Requests that may wait per model beyond its parallel slots (then 429)",
    ),
    Setting(
        "cpu_turns",
        "OFFGRID_CPU_TURNS",
        "scheduler.cpu_turns",
        "Engines on the CPU take turns computing when their threads would outnumber the cores",
    ),
    Setting(
        "keep_alive",
        "OFFGRID_KEEP_ALIVE",
        "scheduler.keep_alive",
        "Idle time before a model unloads: 5m, 30s, 1h; 0 = at once, -1 = never",
    ),
    Setting(
        "pinned_models",
        "OFFGRID_PINNED_MODELS",
        "scheduler.pinned_models",
        "Comma-separated model ids that never unload",
    ),
    Setting(
        "model_aliases",
        "OFFGRID_MODEL_ALIASES",
        "models.aliases",
        "Other names for models, name=id,... (e.g. gpt-4o-mini=SmolLM2-135M-Instruct.Q4_1)",
    ),
    Setting(
        "model_settings",
        "OFFGRID_MODEL_SETTINGS",
        "models.settings",
        "Per-model context_size, parallel, threads, gpu_layers, extra_args (JSON in env)",
    ),
    Setting(
        "insecure_no_auth",
        "OFFGRID_INSECURE_NO_AUTH",
        "server.insecure_no_auth",
        "Serve beyond loopback with no API key (anyone on the network may use it)",
    ),
    Setting(
        "api_key",
        "OFFGRID_API_KEY",
        "client.api_key",
        "The API key the offgrid CLI sends to the server (never printed)",
    ),
    Setting(
        "p2p",
        "OFFGRID_P2P",
        "p2p.enabled",
        "Take part in the LAN: the peer listener, DNS-SD discovery, pairing (off: loopback only)",
    ),
    Setting("p2p_host", "OFFGRID_P2P_HOST", "p2p.host", "Bind address of the peer listener"),
    Setting("p2p_port", "OFFGRID_P2P_PORT", "p2p.port", "Port of the peer listener (mutual TLS)"),
    Setting(
        "p2p_discovery",
        "OFFGRID_P2P_DISCOVERY",
        "p2p.discovery",
        "Announce this node and hear others by multicast DNS-SD (off: peers by address only)",
    ),
    Setting(
        "p2p_token",
        "OFFGRID_P2P_TOKEN",
        "p2p.token",
        "A fleet's pairing secret: nodes that present it pair with no code (never printed)",
    ),
    Setting("node_name", "OFFGRID_NODE_NAME", "p2p.node_name", "This node's name (the hostname)"),
    Setting(
        "federation",
        "OFFGRID_FEDERATION",
        "p2p.federation",
        "Send requests for models this node lacks to a paired peer that has them (needs P2P)",
    ),
    Setting(
        "rpc_worker",
        "OFFGRID_RPC_WORKER",
        "p2p.rpc_worker",
        "Lend this box's memory to paired peers' split models (llama.cpp RPC, via the peer port)",
    ),
    Setting(
        "split_models",
        "OFFGRID_SPLIT_MODELS",
        "p2p.split_models",
        "Model ids to spread over paired peers' RPC workers, by their free memory (','-separated)",
    ),
)

SECRETS = frozenset({"api_key", "p2p_token"})  # never printed or logged

_TYPES: dict[str, type] = {f.name: f.type for f in fields(Settings)}  # type: ignore[misc]


def _coerce(name: str, value: Any) -> Any:
    kind = _TYPES[name]
    if kind in ("bool", bool):
        return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")
    if kind in ("Path", Path):
        return Path(os.path.expanduser(str(value)))
    if kind in ("int", int):
        return int(value)
    if kind in ("float", float):
        return float(value)
    if isinstance(value, list | tuple):
        separator = os.pathsep if name in ("extra_model_dirs", "import_dirs") else ","
        return separator.join(str(v) for v in value)
    if isinstance(value, dict):  # a mapping in the config file
        if name == "model_aliases":
            return ",".join(f"{k}={v}" for k, v in value.items())
        return json.dumps(value)
    return str(value)


def config_file_path(env: Mapping[str, str]) -> Path | None:
    """The config file in use: ``OFFGRID_CONFIG``, else the first of the usual places."""
    if env.get("OFFGRID_CONFIG"):
        return Path(os.path.expanduser(env["OFFGRID_CONFIG"]))
    for candidate in (
        Path(env.get("XDG_CONFIG_HOME") or _home(env) / ".config") / "offgrid" / "config.yaml",
        _home(env) / ".offgrid-llm" / "config.yaml",
    ):
        if candidate.is_file():
            return candidate
    return None


def read_config_file(path: Path) -> dict[str, Any]:
    """Parse a YAML or JSON config file into ``{setting name: value}``."""
    import yaml  # here: most commands run with no config file, and yaml costs 25 ms

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"Cannot read config file {path}: {exc.strerror}") from exc
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"Config file {path} is not valid YAML/JSON: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"Config file {path} must hold a mapping at the top level")
    values: dict[str, Any] = {}
    for setting in FIELDS:
        node: Any = data
        for part in setting.file_key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            values[setting.name] = node
    return values


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Build Settings from defaults, the config file and ``env`` (default: the process env)."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {
        "models_dir": _data_home(env) / "offgrid" / "models",
        "data_dir": _data_home(env) / "offgrid",
        "cache_dir": _cache_home(env) / "offgrid",
    }
    sources: dict[str, str] = {}
    path = config_file_path(env)
    if path is not None:
        for name, value in read_config_file(path).items():
            values[name], sources[name] = value, str(path)
    for setting in FIELDS:
        if env.get(setting.env, "") != "":
            values[setting.name], sources[setting.name] = env[setting.env], "env"
    coerced: dict[str, Any] = {}
    for name, value in values.items():
        try:
            coerced[name] = _coerce(name, value)
            check = {
                "keep_alive": parse_duration,
                "gpu_memory": parse_size,
                "memory": parse_size,
                "model_aliases": parse_aliases,
                "model_settings": parse_model_settings,
                "log_level": one_of("debug", "info", "warning", "error"),
                "log_format": one_of("text", "json"),
            }.get(name)
            if check:
                check(coerced[name])
        except (ValueError, ConfigError) as exc:
            where = sources.get(name, "default")
            detail = f": {exc.message}" if isinstance(exc, ConfigError) else ""
            raise ConfigError(
                f"Setting {name} has an invalid value {value!r} (from {where}){detail}"
            ) from None
    return Settings(**coerced, sources=sources)
