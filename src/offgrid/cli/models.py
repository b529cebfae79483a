"""Model commands: list, show, verify, remove, import, export, and the node's keys."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from offgrid.atomic_files import ReadBack
from offgrid.cli.common import (
    call_server,
    file_progress,
    human_size,
    print_columns,
    settings_from,
)
from offgrid.config import Settings
from offgrid.errors import EngineUnavailableError, OffGridError
from offgrid.models.bundle import export_bundle
from offgrid.models.importer import import_found
from offgrid.models.keys import Keys
from offgrid.models.registry import Registry
from offgrid.models.sources import find_candidates

_STYLE = {"imported": "green", "linked": "green", "skipped": "yellow", "refused": "red"}


def _read_back(value: str) -> ReadBack:
    if value not in ("none", "sample", "all"):
        raise OffGridError(f"--read-back must be none, sample or all, not {value!r}")
    return value  # type: ignore[return-value]


def keys_of(settings: Settings) -> Keys:
    return Keys(settings.data_dir / "keys")


def register(app: typer.Typer) -> None:
    @app.command("list")
    def list_models() -> None:
        """List installed models: id, size, quantization, architecture, context."""
        settings = settings_from()
        models = Registry.for_settings(settings).list()
        console = Console()
        if not models:
            console.print(
                f"No models in {settings.models_dir}. Run `offgrid setup`, `offgrid import` "
                "or add .gguf files."
            )
            return
        rows = []
        for m in models:
            g = m.gguf
            if g is None:
                rows.append([m.id, human_size(m.size), "?", f"unreadable: {m.error}", "", ""])
                continue
            params = g.parameters / 1e6
            rows.append(
                [
                    m.id,
                    human_size(m.size),
                    g.quantization,
                    g.architecture,
                    f"{params:.0f}M" if params < 1000 else f"{params / 1000:.1f}B",
                    str(g.context_length),
                ]
            )
        print_columns(["ID", "SIZE", "QUANT", "ARCH", "PARAMS", "CONTEXT"], rows)

    @app.command()
    def show(
        model: Annotated[str, typer.Argument(help="Model id")],
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
    ) -> None:
        """Show a model: metadata, chat template, memory estimate, path, sha256, origin."""
        from offgrid.api.app import estimate

        settings = settings_from()
        registry = Registry.for_settings(settings)
        info = registry.get(model)
        with file_progress() as progress:
            details = {**info.as_dict(), "sha256": registry.hash_of(info, progress)}
        details["memory"] = estimate(settings, info)
        if as_json:
            print(json.dumps(details, indent=2))
            return
        table = Table(show_header=False, box=None)
        for key, value in details.items():
            if key == "memory":
                value = ", ".join(
                    f"{k.removesuffix('_bytes')} {human_size(v)}" for k, v in value.items()
                )
            elif key == "size":
                value = f"{human_size(value)} ({value:,} bytes)"
            elif key == "origin":
                value = ", ".join(f"{k}={v}" for k, v in value.items()) or "found in its folder"
            if value is not None:
                table.add_row(key, str(value))
        Console().print(table)

    @app.command()
    def verify(
        models: Annotated[list[str] | None, typer.Argument(help="Model ids (default: all)")] = None,
        accept: Annotated[
            bool, typer.Option(help="Record the current hash of a changed file as the good one")
        ] = False,
    ) -> None:
        """Hash the models again: OK, CHANGED (differs from the recorded hash) or MISSING."""
        registry = Registry.for_settings(settings_from())
        with file_progress() as progress:
            checks = registry.verify(models or [], accept=accept, progress=progress)
        console = Console()
        style = {"OK": "green", "CHANGED": "red", "MISSING": "red"}
        for c in checks:
            note = f"  {c.detail}" if c.detail else ""
            console.print(
                f"[{style[c.status]}]{c.status:8}[/] {c.model_id}{note}",
                highlight=False,
                soft_wrap=True,
            )
        bad = [c for c in checks if c.status != "OK"]
        console.print(f"{len(checks) - len(bad)} OK, {len(bad)} not OK", highlight=False)
        if bad:
            raise typer.Exit(1)

    @app.command()
    def remove(
        model: Annotated[str, typer.Argument(help="Model id")],
        force: Annotated[bool, typer.Option(help="Unload it first if it is loaded")] = False,
    ) -> None:
        """Remove a model: delete its file (a linked one is only forgotten)."""
        try:
            done = call_server("DELETE", f"/api/models/{model}", params={"force": force})["done"]
        except EngineUnavailableError:  # no server runs, so nothing has it loaded
            done = Registry.for_settings(settings_from()).remove(model)
        Console().print(f"{model}: {done}", highlight=False)

    @app.command("import")
    def import_models(
        source: Annotated[
            str,
            typer.Argument(
                help="A .gguf file, a folder, a bundle, an Ollama model name (llama3.2:1b), "
                "or ollama / hf-cache / lmstudio for those tools' folders"
            ),
        ],
        link: Annotated[
            bool, typer.Option(help="Use the files where they are instead of copying them")
        ] = False,
        name: Annotated[str | None, typer.Option(help="Model id to give a single file")] = None,
        ollama_dir: Annotated[Path | None, typer.Option(help="The Ollama model store")] = None,
        allow_untrusted: Annotated[
            bool, typer.Option(help="Accept a bundle not signed by a trusted key")
        ] = False,
    ) -> None:
        """Import models, verifying each: a damaged or clashing file is refused, a copy skipped."""
        settings = settings_from()
        registry = Registry.for_settings(settings)
        found = find_candidates(
            source, keys_of(settings), allow_untrusted=allow_untrusted, ollama_dir=ollama_dir
        )
        console = Console()
        if found.note:
            console.print(f"Bundle {found.note}", highlight=False)
        counts: dict[str, int] = {}
        with file_progress() as progress:
            for o in import_found(registry, found, link=link, name=name, progress=progress):
                counts[o.status] = counts.get(o.status, 0) + 1
                detail = f": {o.detail}" if o.detail else ""
                console.print(
                    f"[{_STYLE[o.status]}]{o.status:8}[/] {o.model_id} ← {o.path}{detail}",
                    highlight=False,
                    soft_wrap=True,
                )
        if found.passed_over:
            counts["not .gguf"] = len(found.passed_over)
        console.print(", ".join(f"{n} {s}" for s, n in counts.items()), highlight=False)
        if counts.get("refused"):
            raise typer.Exit(1)

    @app.command()
    def export(
        args: Annotated[list[str], typer.Argument(help="Model ids, then the destination folder")],
        sign: Annotated[bool, typer.Option(help="Sign the manifest with this node's key")] = True,
        read_back: Annotated[
            str,
            typer.Option(
                help="Check what the medium holds: sample (32 blocks per file), all (every "
                "byte, as long again as writing) or none"
            ),
        ] = "sample",
    ) -> None:
        """Export models as a verified bundle (e.g. to a USB stick) that `offgrid import` reads."""
        if len(args) < 2:
            raise OffGridError("Give at least one model id and a destination folder")
        settings = settings_from()
        *ids, dest = args
        keys = keys_of(settings) if sign else None
        with file_progress() as progress:
            manifest = export_bundle(
                Registry.for_settings(settings),
                ids,
                Path(dest),
                keys=keys,
                read_back=_read_back(read_back),
                progress=progress,
            )
        Console().print(f"Exported {len(ids)} model(s) to {manifest.parent}", highlight=False)

    key_app = typer.Typer(help="This node's signing key and the keys it trusts.")
    app.add_typer(key_app, name="key")

    @key_app.callback(invoke_without_command=True)
    def key(ctx: typer.Context) -> None:
        """Print this node's public key (made on first use)."""
        if ctx.invoked_subcommand is None:
            print(keys_of(settings_from()).public_key())

    @key_app.command("trust")
    def trust(
        public_key: Annotated[str, typer.Argument(help="A key as `offgrid key` prints it")],
        name: Annotated[str, typer.Option(help="Who it belongs to")] = "",
    ) -> None:
        """Trust bundles signed by this key (from then on, only trusted ones are accepted)."""
        keys_of(settings_from()).trust(public_key, name)
        Console().print("Trusted.")

    @key_app.command("list")
    def list_keys() -> None:
        """List the trusted keys."""
        keys = keys_of(settings_from())
        print(f"{keys.public_key()} (this node)")
        for k, n in keys.trusted().items():
            print(f"{k} {n}".rstrip())
