"""Every ``offgrid`` command: its name, where it lives, and the line ``offgrid --help``
shows for it — the one place to add a command."""

from __future__ import annotations

__all__ = ["COMMANDS", "HELP"]

HELP = "OffGrid LLM: offline-first LLM inference server (OpenAI-compatible API)."

COMMANDS: dict[str, tuple[str, str]] = {
    # name: ("module:attribute" under offgrid.cli, the line `offgrid --help` shows for it)
    "serve": (
        "serve:serve",
        "Start the OpenAI-compatible HTTP server (Ctrl-C stops it and its engines).",
    ),
    "run": (
        "chat:run",
        "Chat with a model: streaming replies, history; 'clear' resets, 'exit' quits.",
    ),
    "list": (
        "listing:list_models",
        "List installed models: id, size, quantization, architecture, context.",
    ),
    "show": (
        "models:show",
        "Show a model: metadata, chat template, memory estimate, path, sha256, origin.",
    ),
    "verify": (
        "models:verify",
        "Hash the models again: OK, CHANGED (differs from the recorded hash) or MISSING.",
    ),
    "remove": (
        "models:remove",
        "Remove a model: delete its file (a linked one is only forgotten).",
    ),
    "import": (
        "bundles:import_models",
        "Import models, verifying each: a damaged or clashing file is refused, a copy skipped.",
    ),
    "export": (
        "bundles:export",
        "Export models as a verified bundle (e.g. to a USB stick) that `offgrid import` reads.",
    ),
    "search": (
        "hub_cmd:search",
        "Search the HuggingFace Hub for GGUF models, with sizes and whether they fit here.",
    ),
    "download-hf": (
        "hub_cmd:download_hf",
        "Download a GGUF model from the Hub: resumable, sha256-verified, registered.",
    ),
    "catalog": (
        "hub_cmd:catalog",
        "Browse the model catalog: models picked for offline boxes, by name.",
    ),
    "download": (
        "hub_cmd:download",
        "Download a model from the catalog, checked against the catalog's sha256.",
    ),
    "quantization": (
        "hub_cmd:quantization",
        "The quantization levels: bits per weight, quality, and which fit this machine.",
    ),
    "ps": (
        "running:ps",
        "Show loaded models: memory, GPU layers, requests running and queued, expiry, pid.",
    ),
    "load": ("running:load", "Load a model in the running server now."),
    "stop": ("running:stop", "Unload a model from the running server."),
    "benchmark": (
        "benchmark:benchmark",
        "Prompt and generation tokens/s and time to first token at rising concurrency.",
    ),
    "info": (
        "info:info",
        "Show the engine binary, its version and backend, CPU, RAM and the models folder.",
    ),
    "setup": (
        "setup:setup",
        "Build llama-server (once per machine, cached) and place the starter model.",
    ),
    "keys": ("keys_cmd:app", "API keys: create (shown once), list, revoke."),
    "doctor": (
        "service_cmd:doctor",
        "Check the service, port, health, engine, models folder, disk, GPU and config.",
    ),
    "logs": ("service_cmd:logs", "Show the service's log from the journal (-f to follow)."),
    "pack": (
        "pack:pack",
        "Write an installer for boxes with no network: wheels, engine, models, all signed.",
    ),
    "signing-key": (
        "bundles:key_app",
        "This node's bundle-signing key and the signing keys it trusts.",
    ),
    "config": ("config_cmd:app", "Show, create or check the configuration."),
    "tune": (
        "tune_cmd:tune",
        "Find the engine flags that serve a model fastest here (threads, KV, batch, draft).",
    ),
    "peers": ("peers_cmd:app", "LAN peers: pair (a one-time code), list, forget."),
    "rpc-worker": (
        "serve:rpc_worker",
        "Serve with an RPC worker that paired peers may put model layers on (mutual TLS).",
    ),
    "pull": (
        "peers_cmd:pull",
        "Pull a model from a paired peer on the LAN: resumable, checked against its manifest.",
    ),
}
