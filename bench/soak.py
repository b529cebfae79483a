"""Soak: a real server under a mixed load for a long while, and what it looks like after.

Three models (the starter, Gemma, and the starter under a second name) with room for two
loaded at once (OFFGRID_MAX_LOADED_MODELS=2), so engines are swapped all along; 8 clients
at once, each choosing a model and one of: a streamed chat (60 %), a whole one (25 %), a
stream it cancels after two events (15 %); a small queue (OFFGRID_MAX_QUEUE=2 with 2
slots a model) so some requests get 429 and retry after what Retry-After says. Reports
requests served, errors by kind, p50/p99 time to first token (queue wait and prefill:
the client's view) and of whole answers, the server's RSS and open file descriptors at the
start (after a warm-up) and the end, and the engines left once it stops. Goals: no error
but 429s, RSS growth < 5 %, file descriptors flat, 0 engines left.

Run: .venv/bin/python bench/soak.py [--minutes 30] [--clients 8]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import psutil
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from conftest import REAL_ENV, link_models, llama_server_pids, start_server
from offgrid.config import load_settings
from offgrid.engine.build import find_engine
from offgrid.models.starter import GEMMA, STARTER, place_model

MODELS = ["SmolLM2-135M-Instruct.Q4_1", "gemma-3-270m-q4_k_m", "smol-twin"]
PROMPTS = ["Say hello.", "Name three rivers.", "Count to five.", "What is offline-first?"]


class Tally:
    def __init__(self) -> None:
        self.outcomes: collections.Counter[str] = collections.Counter()
        self.ttft: list[float] = []
        self.whole: list[float] = []


async def one(http: aiohttp.ClientSession, url: str, rng: random.Random, tally: Tally) -> None:
    model, roll = rng.choice(MODELS), rng.random()
    body = {
        "model": model,
        "messages": [{"role": "user", "content": rng.choice(PROMPTS)}],
        "max_tokens": rng.randint(8, 48),
        "stream": roll < 0.75,
    }
    began = time.perf_counter()
    try:
        async with http.post(f"{url}/v1/chat/completions", json=body) as resp:
            if resp.status == 429:
                tally.outcomes["429 (retried)"] += 1
                await asyncio.sleep(float(resp.headers.get("Retry-After", "1")))
                return
            if resp.status != 200:
                tally.outcomes[f"HTTP {resp.status}: {(await resp.text())[:80]}"] += 1
                return
            if not body["stream"]:
                await resp.json()
                tally.whole.append(time.perf_counter() - began)
                tally.outcomes["whole"] += 1
                return
            events = 0
            async for line in resp.content:
                if line.startswith(b"data: {"):
                    if b'"error"' in line:
                        tally.outcomes[f"error event: {line[:80]!r}"] += 1
                        return
                    events += 1
                    if events == 1:
                        tally.ttft.append(time.perf_counter() - began)
                    if roll >= 0.60 and events == 2:  # a client that leaves midway
                        tally.outcomes["cancelled"] += 1
                        return
            tally.outcomes["streamed"] += 1
    except (TimeoutError, aiohttp.ClientError) as exc:
        tally.outcomes[f"client error: {type(exc).__name__}"] += 1


async def client(url: str, seed: int, until: float, tally: Tally) -> None:
    rng = random.Random(seed)
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        while time.monotonic() < until:
            await one(http, url, rng, tally)


def footprint(pid: int) -> tuple[float, int]:
    proc = psutil.Process(pid)
    return proc.memory_info().rss / 1e6, proc.num_fds()


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] * 1000 if len(values) > 1 else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    settings = load_settings(REAL_ENV)
    store = settings.cache_dir / "test-models"
    for model in (STARTER, GEMMA):
        place_model(model, store, settings.cache_dir / "downloads")
    tmp = Path(tempfile.mkdtemp(prefix="offgrid-soak-"))
    (tmp / "home").mkdir()
    files = {f.file_name: f.file_name for f in (STARTER, GEMMA)}
    models = link_models(store, tmp / "m", {**files, "smol-twin.gguf": STARTER.file_name})
    srv = start_server(
        tmp,
        models,
        find_engine(settings),
        OFFGRID_MAX_LOADED_MODELS="2",
        OFFGRID_PARALLEL="2",
        OFFGRID_MAX_QUEUE="2",
        OFFGRID_MAX_CONTEXT="1024",
        OFFGRID_NUM_THREADS="0",  # the product's default (a thread per core), not the tests' 1
    )
    warm = Tally()
    asyncio.run(client(srv.url, 0, time.monotonic() + 20, warm))  # engines built, caches hot
    rss0, fds0 = footprint(srv.proc.pid)
    tally = Tally()
    until = time.monotonic() + args.minutes * 60

    async def run() -> None:
        await asyncio.gather(*(client(srv.url, i + 1, until, tally) for i in range(args.clients)))

    began = time.monotonic()
    asyncio.run(run())
    rss1, fds1 = footprint(srv.proc.pid)
    waits = queue_waits(requests.get(f"{srv.url}/metrics", timeout=30).text)
    engines = {p for p in llama_server_pids() if psutil.Process(p).ppid() == srv.proc.pid}
    srv.stop()
    left = [p for p in engines if psutil.pid_exists(p)]
    served = sum(n for k, n in tally.outcomes.items() if k in ("streamed", "whole", "cancelled"))
    print(f"soak: {args.minutes:g} min, {args.clients} clients, 3 models, room for 2")
    print(f"requests served {served} in {time.monotonic() - began:.0f} s; outcomes:")
    for kind, n in tally.outcomes.most_common():
        print(f"  {n:>7}  {kind}")
    print(
        f"time to first token: p50 {pct(tally.ttft, 50):.0f} ms, p99 {pct(tally.ttft, 99):.0f} ms"
    )
    print(f"whole answers: p50 {pct(tally.whole, 50):.0f} ms, p99 {pct(tally.whole, 99):.0f} ms")
    print(
        f"queue wait (the server's histogram, load and queue): p50 ≤ {bound(waits, 0.5)} s, "
        f"p99 ≤ {bound(waits, 0.99)} s"
    )
    print(f"server RSS {rss0:.1f} → {rss1:.1f} MB ({(rss1 / rss0 - 1) * 100:+.1f} %, goal < 5 %)")
    print(f"server open fds {fds0} → {fds1} (goal: flat)")
    print(f"engines running at the end {len(engines)}, left after stop {len(left)} (goal 0)")


def queue_waits(metrics: str) -> dict[float, float]:
    """The cumulative counts of ``offgrid_queue_wait_seconds`` by bucket, all models."""
    counts: dict[float, float] = {}
    for line in metrics.splitlines():
        if line.startswith("offgrid_queue_wait_seconds_bucket"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            bucket = float("inf") if le == "+Inf" else float(le)
            counts[bucket] = counts.get(bucket, 0.0) + float(line.rsplit(" ", 1)[1])
    return counts


def bound(counts: dict[float, float], share: float) -> str:
    """The smallest bucket bound under which ``share`` of the waits fall."""
    total = counts.get(float("inf"), 0.0)
    for le in sorted(counts):
        if total and counts[le] >= share * total:
            return f"{le:g}"
    return "?"


if __name__ == "__main__":
    main()
