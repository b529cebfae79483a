"""Two models asked at once on the CPU: OffGrid with engines taking turns
(``OFFGRID_CPU_TURNS``, the default) against without, and against two direct llama-servers
asked at once, in one run.

Each round sends ``--streams`` streamed chats to model a and as many to model b at the
same moment (each engine started with a thread per core, as by default) and measures the
aggregate tokens/s until all are done, and the slowest request's time to first token.

Run: .venv/bin/python bench/cpu_turns.py [--rounds 3] [--streams 1] [--tokens 96]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time

import aiohttp

from offgrid.engine.process import default_threads, free_port
from offgrid.models.starter import STARTER
from relay import Bench, stream_once, wait_health


async def both_at_once(urls: dict[str, str], streams: int, tokens: int) -> tuple[float, float]:
    """(aggregate tokens/s, slowest time to first token) of ``streams`` chats to each model
    (``{model: its server's URL}``) sent together."""
    conn = aiohttp.TCPConnector(force_close=True, limit=0)
    async with aiohttp.ClientSession(connector=conn) as http:
        t0 = time.perf_counter()
        runs = [stream_once(http, url, m, tokens) for m, url in urls.items()] * streams
        results = await asyncio.gather(*runs)
        wall = time.perf_counter() - t0
    return sum(r[2] for r in results) / wall, max(r[0] for r in results)


async def run(args: argparse.Namespace) -> None:
    bench = Bench.make(["a", "b"], args.threads)
    servers = []  # (process, its URL)
    urls: dict[str, dict[str, str]] = {}  # name -> {model: URL}
    for name, turns in (("turns", "true"), ("no turns", "false")):
        url = f"http://127.0.0.1:{(port := free_port())}"
        servers.append((bench.start_offgrid(port, OFFGRID_CPU_TURNS=turns), url))
        urls[name] = {"a": url, "b": url}
    for model in ("a", "b"):
        url = f"http://127.0.0.1:{(port := free_port())}"
        servers.append((bench.start_direct(model, port, f"direct-{model}.log"), url))
        urls.setdefault("direct", {})[model] = url
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in urls}
    try:
        for proc, url in servers:
            wait_health(url, proc)
        for targets in urls.values():  # load every engine, warm it
            await both_at_once(targets, 1, 4)
        order = list(urls)
        for r in range(args.rounds):
            for name in order if r % 2 == 0 else order[::-1]:
                results[name].append(await both_at_once(urls[name], args.streams, args.tokens))
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    finally:
        for proc, _ in servers:
            proc.terminate()
            proc.wait(30)

    med = statistics.median
    print(f"\ncpu turns: {STARTER.model_id} as a and b, {bench.binary.version()}")
    print(f"rounds={args.rounds}, {args.threads} threads per engine, {default_threads()} cores,")
    print(f"{args.streams} stream(s) to each model at once, {args.tokens} tokens each\n")
    print(f"{'(medians)':<28}{'tok/s':>9}{'slowest first token, s':>24}")
    for name, runs in results.items():
        label = {"direct": "direct llama-servers"}.get(name, f"offgrid, {name}")
        print(f"{label:<28}{med(r[0] for r in runs):>9.1f}{med(r[1] for r in runs):>24.2f}")
    turns, off, direct = (results[n] for n in ("turns", "no turns", "direct"))
    paired = med(t[0] / o[0] for t, o in zip(turns, off, strict=True))
    print(f"\ntok/s with turns / without: {paired:.2f} (paired)")
    paired = med(t[0] / d[0] for t, d in zip(turns, direct, strict=True))
    print(f"tok/s with turns / direct llama-servers at once: {paired:.2f} (paired)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--streams", type=int, default=1)
    parser.add_argument("--tokens", type=int, default=96)
    parser.add_argument("--threads", type=int, default=default_threads())
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
