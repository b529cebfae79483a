"""Moving models between boxes: ``import``, ``export``, and ``key``, the keys that sign the
bundles."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from offgrid.atomic_files import ReadBack
from offgrid.cli.common import file_progress, print_status, settings_from
from offgrid.config import Settings
from offgrid.errors import OffGridError
from offgrid.models.keys import Keys
from offgrid.models.registry import Registry

_STYLE = {"imported": "green", "linked": "green", "skipped": "yellow", "refused": "red"}


def _read_back(value: str) -> ReadBack:
    if value not in ("none", "sample", "all"):
        raise OffGridError(f"--read-back must be none, sample or all, not {value!r}")
    return value  # type: ignore[return-value]


def keys_of(settings: Settings) -> Keys:
    return Keys(settings.data_dir / "keys")


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
    from offgrid.models.importer import import_found
    from offgrid.models.sources import find_candidates

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
            print_status(console, _STYLE[o.status], o.status, f"{o.model_id} ← {o.path}{detail}")
    if found.passed_over:
        counts["not .gguf"] = len(found.passed_over)
    console.print(", ".join(f"{n} {s}" for s, n in counts.items()), highlight=False)
    if counts.get("refused"):
        raise typer.Exit(1)


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
    from offgrid.models.bundle import export_bundle

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


key_app = typer.Typer(add_completion=False)


@key_app.callback(invoke_without_command=True)
def key(ctx: typer.Context) -> None:
    """Print this node's public key (made on first use)."""
    if ctx.invoked_subcommand is None:
        print(keys_of(settings_from()).public_key())


@key_app.command("trust")
def trust(
    public_key: Annotated[str, typer.Argument(help="A key as `offgrid signing-key` prints it")],
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
