"""``offgrid benchmark <model>``: speed through the running server (or one started here)."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from offgrid.cli.common import settings_from


def register(app: typer.Typer) -> None:
    @app.command()
    def benchmark(
        model: Annotated[str, typer.Argument(help="Model id")],
        concurrency: Annotated[
            str, typer.Option(help="Comma-separated concurrent stream counts")
        ] = "1,2,4",
        max_tokens: Annotated[int, typer.Option(help="Tokens generated per request")] = 128,
        rounds: Annotated[int, typer.Option(help="Rounds per level")] = 2,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON only")] = False,
    ) -> None:
        """Prompt and generation tokens/s and time to first token at rising concurrency."""
        from offgrid.benchmark import run_benchmark
        from offgrid.server import api_url

        try:
            levels = [int(c) for c in concurrency.split(",") if c.strip()]
        except ValueError:
            raise typer.BadParameter("--concurrency takes numbers like 1,2,4") from None
        console = Console(stderr=True)
        with api_url(settings_from()) as base_url, console.status("Benchmarking…") as status:
            results = asyncio.run(
                run_benchmark(
                    base_url,
                    model,
                    levels=levels,
                    max_tokens=max_tokens,
                    rounds=rounds,
                    on_progress=lambda msg: status.update(f"Benchmarking {model}: {msg}"),
                )
            )
        if as_json:
            print(json.dumps({"model": model, "levels": [r.as_dict() for r in results]}))
            return
        table = Table(title=f"{model}, {max_tokens} tokens per request")
        for column in ("STREAMS", "TTFT ms", "PROMPT tok/s", "GEN tok/s (each)", "GEN tok/s (all)"):
            table.add_column(column, justify="right")
        for r in results:
            table.add_row(
                str(r.concurrency),
                f"{r.ttft_ms_median:.0f}",
                f"{r.prompt_tokens_per_s:.0f}",
                f"{r.generation_tokens_per_s:.1f}",
                f"{r.aggregate_tokens_per_s:.1f}",
            )
        Console().print(table)
