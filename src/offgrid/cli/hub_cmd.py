"""Getting models while online: search, download-hf, catalog, download; and the
quantization guide. Downloads run in this process, straight into the models folder
(a running server sees a new model on its next listing)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from offgrid.cli.common import file_progress, human_size, print_columns, settings_from
from offgrid.errors import BadRequestError, ModelNotFoundError
from offgrid.models import catalog as catalog_mod
from offgrid.models.quantization import LEVELS, size_at
from offgrid.models.registry import Registry
from offgrid.placement import rough_need
from offgrid.resources import machine_fits, system_facts
from offgrid.units import parse_size

if TYPE_CHECKING:  # the hub client is imported by the commands that use it
    from offgrid.hub.client import RemoteModel


def _yes(fits: bool) -> str:
    return "yes" if fits else "no"


def _parts(names: list[str]) -> str:
    return names[0] + (f" (+{len(names) - 1} parts)" if len(names) > 1 else "")


def _download(remote: RemoteModel, limit_rate: str | None) -> None:
    """Fetch ``remote`` with a progress bar and say what became of it."""
    from offgrid.hub.download import fetch_model

    settings = settings_from()
    registry = Registry.for_settings(settings)
    rate = parse_size(limit_rate) if limit_rate else None
    console = Console(soft_wrap=True)
    with file_progress() as bar:
        fetched = fetch_model(remote, registry, progress=bar, notes=bar.note, rate=rate)
    model = remote.model_id
    if fetched:
        console.print(
            f"Downloaded {model} ({human_size(remote.size)}), sha256 verified. "
            f"Chat with it: offgrid run {model}",
            highlight=False,
        )
    else:
        console.print(f"{model} is already installed and verified; nothing fetched.")


def search(
    query: Annotated[str, typer.Argument(help="Words to look for in repository names")],
    quant: Annotated[str | None, typer.Option(help="Only files at this level: Q4_K_M")] = None,
    sort: Annotated[str, typer.Option(help="downloads, likes or updated")] = "downloads",
    limit: Annotated[int, typer.Option(help="Repositories to show")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    from offgrid.hub import client

    hits = client.search(query, quant=quant, sort=sort, limit=limit)  # type: ignore[arg-type]
    facts = system_facts()
    found = [h.as_dict(facts) for h in hits]
    if as_json:
        print(json.dumps(found, indent=2))
        return
    if not found:
        print(f"No GGUF repository matches {query!r}" + (f" at {quant}." if quant else "."))
        return
    rows = [
        [
            hit["repo"],
            _parts([f["name"] for f in m["files"]]),
            m["quantization"] or "?",
            human_size(m["size"]),
            human_size(m["ram_needed"]),
            _yes(m["fits"]),
            str(hit["downloads"]),
        ]
        for hit in found
        for m in hit["models"]
    ]
    print_columns(["REPO", "FILE", "QUANT", "SIZE", "RAM", "FITS", "DOWNLOADS"], rows)
    print("Download one: offgrid download-hf REPO --file FILE")


def download_hf(
    repo: Annotated[str, typer.Argument(help="Hub repository: owner/name")],
    file: Annotated[str | None, typer.Option(help="The .gguf file to take")] = None,
    quant: Annotated[str | None, typer.Option(help="Or the quantization to take")] = None,
    limit_rate: Annotated[
        str | None, typer.Option(help="Cap the speed, in bytes per second: 5M, 500K")
    ] = None,
) -> None:
    from offgrid.hub import client

    _download(client.pick(client.repo_models(repo), repo, file, quant), limit_rate)


def catalog(
    update: Annotated[
        Path | None, typer.Option(help="Install a newer catalog from this file (offline)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    settings = settings_from()
    if update is not None:
        entries = catalog_mod.update(settings.data_dir, update)
        print(f"Catalog updated from {update}: {len(entries)} models.")
        return
    entries = catalog_mod.load(settings.data_dir)
    facts = system_facts()
    if as_json:
        print(json.dumps([e.as_dict(facts) for e in entries], indent=2))
        return
    rows = []
    for e in entries:
        q = e.quant()
        rows.append(
            [
                e.id,
                e.parameters,
                ", ".join(x.name for x in e.quants),
                human_size(q.size),
                human_size(q.ram_needed),
                _yes(machine_fits(q.ram_needed, facts)),
                e.license,
                e.good_for,
            ]
        )
    headers = ["ID", "PARAMS", "QUANTS", "SIZE", "RAM", "FITS", "LICENSE", "GOOD FOR"]
    print_columns(headers, rows)
    print("Size, RAM and FITS are for the first quantization. Get one: offgrid download ID")


def download(
    model: Annotated[str, typer.Argument(help="Catalog model id (see offgrid catalog)")],
    quant: Annotated[str | None, typer.Argument(help="Quantization (default: the usual)")] = None,
    limit_rate: Annotated[
        str | None, typer.Option(help="Cap the speed, in bytes per second: 5M, 500K")
    ] = None,
) -> None:
    from offgrid.hub import client

    entry = catalog_mod.find(catalog_mod.load(settings_from().data_dir), model)
    _download(client.from_catalog(entry.quant(quant)), limit_rate)


def quantization(
    model: Annotated[
        str | None,
        typer.Argument(help="A catalog or installed model id, or a size such as 7B"),
    ] = None,
) -> None:
    params = _parameters(model) if model else None
    facts = system_facts()
    rows = []
    for lv in LEVELS:
        row = [lv.name, f"{lv.bits:.2f}", lv.quality]
        if params:
            size = size_at(params, lv.name) or 0
            need = rough_need(size)
            row[2:2] = [human_size(size), human_size(need), _yes(machine_fits(need, facts))]
        rows.append(row)
    extra = ["SIZE", "RAM", "FITS"] if params else []
    print_columns(["LEVEL", "BITS/WEIGHT", *extra, "QUALITY"], rows)
    if params:
        print(f"For {model}: {params / 1e9:.2f}B parameters; sizes are estimates.")
    else:
        print("Q4_K_M is the usual choice. For sizes: offgrid quantization MODEL (or 7B)")


def _parameters(model: str) -> int:
    """Parameters of a catalog model, an installed model, or a size given as 7B / 135M."""
    m = re.fullmatch(r"([\d.]+)\s*([KMBT])", model.strip().upper())
    if m:
        return int(float(m.group(1)) * {"K": 1e3, "M": 1e6, "B": 1e9, "T": 1e12}[m.group(2)])
    settings = settings_from()
    entries = catalog_mod.load(settings.data_dir)
    for e in entries:
        if e.id == model.lower():
            return _parameters(e.parameters)
    try:
        info = Registry.for_settings(settings).get(model)
    except ModelNotFoundError:
        raise BadRequestError(
            f"{model!r} is neither a catalog model, an installed model, nor a size like 7B."
        ) from None
    if info.gguf is None or not info.gguf.parameters:
        raise BadRequestError(f"The parameter count of {model} is not known.")
    return info.gguf.parameters
