"""``offgrid ps``, ``offgrid load`` and ``offgrid stop``: the running server's models."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from offgrid.cli.client import call_server
from offgrid.cli.common import human_size


def ps() -> None:
    rows = call_server("GET", "/api/ps")["models"]
    console = Console()
    if not rows:
        console.print("No model is loaded.")
        return
    table = Table()
    for column in ("ID", "STATE", "MEMORY", "GPU", "BUSY", "QUEUED", "UNTIL", "PID", "PORT"):
        table.add_column(column)
    now = time.time()
    for r in rows:
        until = "pinned" if r.get("pinned") else "busy"
        if r.get("expires_in") is not None:
            until = f"{r['expires_in']:.0f} s"
        elif r.get("keep_alive", 0) < 0:
            until = "forever"
        if r.get("state") == "backoff":
            until = f"retry in {max(0, r['retry_at'] - now):.0f} s: {r['last_error']}"
        table.add_row(
            r["id"],
            r.get("state", ""),
            human_size(r["memory_bytes"]) if r.get("memory_bytes") else "",
            f"{r['gpu_layers']} layers, {human_size(r['vram_bytes'])}"
            if r.get("gpu_layers")
            else "",
            f"{r.get('active_requests', '')}/{r.get('parallel', '')}" if "parallel" in r else "",
            _queued(r),
            until,
            str(r.get("pid", "")),
            str(r.get("port", "")),
        )
    console.print(table)


def _queued(row: dict[str, Any]) -> str:
    """Requests queued, and why, when it is not only that every slot is taken."""
    why = ""
    if row.get("waiting_for_cpu"):
        why = " (waiting for the CPU)"
    elif row.get("draining"):
        why = " (draining)"
    return f"{row.get('queued_requests', '')}{why}"


def load(
    model: Annotated[str, typer.Argument(help="Model id")],
    keep_alive: Annotated[
        str | None, typer.Option(help="Idle time before unloading: 30s, 5m, -1 = never")
    ] = None,
) -> None:
    body = {"keep_alive": keep_alive} if keep_alive is not None else {}
    r = call_server("POST", f"/api/models/{model}/load", json=body)
    Console().print(f"{r['id']} loaded (pid {r['pid']}, port {r['port']})")


def stop(model: Annotated[str, typer.Argument(help="Model id")]) -> None:
    r = call_server("POST", f"/api/models/{model}/unload")
    Console().print(f"{model} {'unloaded' if r['unloaded'] else 'was not loaded'}")
