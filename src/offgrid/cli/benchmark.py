"""``offgrid benchmark <model>``: prompt and generation speed and time to first token, through
the running server (or one started here).

Each level runs N streams at once against the server and reads the engine's own timings
from the final usage chunk (llama-server reports prompt and generation milliseconds), so the
figures are the engine's as seen through OffGrid, plus the wall-clock time to first token
the client saw.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Annotated, Any

import aiohttp
import typer
from rich.console import Console
from rich.table import Table

from offgrid.cli.client import api_url
from offgrid.cli.common import settings_from
from offgrid.errors import EngineError

__all__ = ["LevelResult", "benchmark", "run_benchmark"]

PROMPT = (
    "You are a field guide. Explain, step by step and in detail, how to purify water "
    "when camping far from any town, and why each step matters."
)


@dataclass(frozen=True)
class LevelResult:
    """What one concurrency level measured."""

    concurrency: int
    requests: int
    ttft_ms_median: float
    prompt_tokens_per_s: float  # median of the engine's per-request prompt speed
    generation_tokens_per_s: float  # median per-request generation speed
    aggregate_tokens_per_s: float  # all generated tokens ÷ wall time of the level

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


async def _one(
    http: aiohttp.ClientSession, base_url: str, model: str, max_tokens: int
) -> tuple[float, int, dict[str, Any]]:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,
        "cache_prompt": False,  # measure prompt processing, not the prompt cache
    }
    start = time.perf_counter()
    ttft = 0.0
    tokens = 0
    timings: dict[str, Any] = {}
    async with http.post(f"{base_url}/v1/chat/completions", json=body) as resp:
        if resp.status != 200:
            raise EngineError(f"The server answered {resp.status}: {(await resp.text())[:300]}")
        async for raw in resp.content:
            line = raw.strip()
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            event = json.loads(line[6:])
            if "error" in event:
                raise EngineError(str(event["error"].get("message")))
            if event.get("choices") and event["choices"][0].get("delta", {}).get("content"):
                tokens += 1
                ttft = ttft or time.perf_counter() - start
            timings = event.get("timings") or timings
    return ttft, tokens, timings


async def run_benchmark(
    base_url: str,
    model: str,
    *,
    levels: list[int],
    max_tokens: int = 128,
    rounds: int = 2,
    on_progress: Callable[[str], None] = lambda _msg: None,
) -> list[LevelResult]:
    """Measure each concurrency level ``rounds`` times (after one warm-up request)."""
    results = []
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        on_progress("warming up (loads the model)")
        await _one(http, base_url, model, 4)
        for level in levels:
            ttfts: list[float] = []
            prompt_speed: list[float] = []
            gen_speed: list[float] = []
            generated, wall = 0, 0.0
            for r in range(rounds):
                on_progress(f"{level} concurrent stream(s), round {r + 1}/{rounds}")
                t0 = time.perf_counter()
                runs = await asyncio.gather(
                    *(_one(http, base_url, model, max_tokens) for _ in range(level))
                )
                wall += time.perf_counter() - t0
                for ttft, tokens, timings in runs:
                    ttfts.append(ttft)
                    generated += tokens
                    if timings.get("prompt_per_second"):
                        prompt_speed.append(float(timings["prompt_per_second"]))
                    if timings.get("predicted_per_second"):
                        gen_speed.append(float(timings["predicted_per_second"]))
            results.append(
                LevelResult(
                    concurrency=level,
                    requests=level * rounds,
                    ttft_ms_median=statistics.median(ttfts) * 1000,
                    prompt_tokens_per_s=statistics.median(prompt_speed) if prompt_speed else 0,
                    generation_tokens_per_s=statistics.median(gen_speed) if gen_speed else 0,
                    aggregate_tokens_per_s=generated / wall if wall else 0,
                )
            )
    return results


def benchmark(
    model: Annotated[str, typer.Argument(help="Model id")],
    concurrency: Annotated[
        str, typer.Option(help="Comma-separated concurrent stream counts")
    ] = "1,2,4",
    max_tokens: Annotated[int, typer.Option(help="Tokens generated per request")] = 128,
    rounds: Annotated[int, typer.Option(help="Rounds per level")] = 2,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON only")] = False,
) -> None:
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
