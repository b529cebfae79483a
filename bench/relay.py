"""Relay overhead: the same workload against llama-server directly and through OffGrid.

Both targets run the same engine binary with the same argv (OffGrid's own `build_argv`),
both loaded at once and measured in alternating rounds, so drift on a noisy machine hits
both alike. Prints medians and OffGrid ÷ direct ratios:

  decode tokens/s at 1 and 4 concurrent streams (goal >= 0.99, at least 0.98)
  added time to first token, median (goal <= 1 ms, at most 2 ms)
  Ollama's /api/chat first NDJSON line ÷ OpenAI's first event, both through OffGrid
  (goal: within 1 ms)

Run: .venv/bin/python bench/relay.py [--rounds 12] [--tokens 128]
     [--model FILE.gguf --gpu-layers N]   (another model, e.g. on a GPU; default: the starter)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import psutil

from offgrid.config import load_settings
from offgrid.engine.build import EngineBinary, find_engine
from offgrid.engine.process import EngineOptions, build_argv, free_port
from offgrid.models.registry import ModelInfo, Registry
from offgrid.models.starter import STARTER, place_model

PROMPT = [{"role": "user", "content": "Tell me a long story about a lighthouse keeper."}]


async def stream_once(
    http: aiohttp.ClientSession, url: str, model: str, max_tokens: int
) -> tuple[float, float, int]:
    """(time to first token, decode seconds after it, tokens) for one streamed chat."""
    body = {
        "model": model,
        "messages": PROMPT,
        "max_tokens": max_tokens,
        "stream": True,
        "temperature": 0,
        "ignore_eos": True,
    }
    t0 = time.perf_counter()
    first = last = 0.0
    tokens = 0
    async with http.post(f"{url}/v1/chat/completions", json=body) as resp:
        assert resp.status == 200, await resp.text()
        buf = b""
        async for chunk in resp.content.iter_any():
            buf += chunk
            while b"\n\n" in buf:
                event, buf = buf.split(b"\n\n", 1)
                if not event.startswith(b"data: ") or event == b"data: [DONE]":
                    continue
                data = json.loads(event[6:])
                if data["choices"] and data["choices"][0]["delta"].get("content"):
                    now = time.perf_counter()
                    tokens += 1
                    first = first or now
                    last = now
    return first - t0, last - first, tokens


async def decode_rate(url: str, model: str, streams: int, max_tokens: int) -> float:
    """Aggregate decode tokens/s over ``streams`` concurrent streams."""
    conn = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=conn) as http:
        t0 = time.perf_counter()
        results = await asyncio.gather(
            *(stream_once(http, url, model, max_tokens) for _ in range(streams))
        )
        t1 = time.perf_counter()
    ttft_max = max(r[0] for r in results)
    total = sum(r[2] for r in results) - streams  # the first token of each is prefill
    return total / (t1 - t0 - ttft_max)


async def ollama_first_line(url: str, model: str) -> float:
    """Time to the first NDJSON line with text of a streamed Ollama ``/api/chat``."""
    body = {"model": model, "messages": PROMPT, "stream": True, "options": {"num_predict": 2}}
    conn = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=conn) as http:
        t0 = time.perf_counter()
        async with http.post(f"{url}/api/chat", json=body) as resp:
            assert resp.status == 200, await resp.text()
            async for line in resp.content:
                if json.loads(line)["message"]["content"]:
                    return time.perf_counter() - t0
    raise AssertionError("no text came")


async def ttft(url: str, model: str) -> float:
    conn = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=conn) as http:
        return (await stream_once(http, url, model, 2))[0]


def wait_health(url: str, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{url}: process exited")
        try:
            if requests.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.05)
    sys.exit(f"{url}: not healthy in time")


@dataclass
class Bench:
    """A temp folder with the starter model under the given names, and how to serve it."""

    binary: EngineBinary
    tmp: Path
    models: Path
    threads: int
    gpu_layers: int | None = None

    @classmethod
    def make(
        cls,
        names: list[str],
        threads: int,
        source: Path | None = None,
        gpu_layers: int | None = None,
    ) -> Bench:
        """``names`` are links to ``source`` (default: the starter model)."""
        settings = load_settings()
        tmp = Path(tempfile.mkdtemp(prefix="offgrid-bench-"))
        models = tmp / "models"
        models.mkdir()
        store, downloads = settings.cache_dir / "test-models", settings.cache_dir / "downloads"
        src = source or place_model(STARTER, store, downloads)
        for name in names:
            os.link(src, models / f"{name}.gguf")
        return cls(find_engine(settings), tmp, models, threads, gpu_layers)

    def model(self, model_id: str) -> ModelInfo:
        return Registry([self.models], self.tmp / "index.sqlite").get(model_id)

    def options(self) -> EngineOptions:
        return EngineOptions(
            context=4096, parallel=4, threads=self.threads, gpu_layers=self.gpu_layers
        )

    def start_direct(self, model_id: str, port: int, log_name: str) -> subprocess.Popen[bytes]:
        """llama-server started directly, with the argv OffGrid would use."""
        log = (self.tmp / log_name).open("wb")
        argv = build_argv(self.binary.path, self.model(model_id), self.options(), port)
        return subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True)

    def start_offgrid(self, port: int, **env: str) -> subprocess.Popen[bytes]:
        log = (self.tmp / "offgrid.log").open("wb")
        full_env = {
            **os.environ,
            "OFFGRID_PORT": str(port),
            "OFFGRID_MODELS_DIR": str(self.models),
            "OFFGRID_CACHE_DIR": str(self.tmp / "cache"),
            "OFFGRID_LLAMA_SERVER": str(self.binary.path),
            "OFFGRID_NUM_THREADS": str(self.threads),
            "OFFGRID_MAX_CONTEXT": "4096",
            "OFFGRID_PARALLEL": "4",
            "OFFGRID_LOG_LEVEL": "warning",
            "OFFGRID_GPU_LAYERS": str(-1 if self.gpu_layers is None else self.gpu_layers),
            **env,
        }
        argv = [sys.executable, "-m", "offgrid", "serve"]
        return subprocess.Popen(argv, env=full_env, stdout=log, stderr=log)


async def run(args: argparse.Namespace) -> None:
    name = args.model.stem if args.model else STARTER.model_id
    bench = Bench.make([name], args.threads, args.model, args.gpu_layers)
    model = bench.model(name)
    binary = bench.binary
    direct_port, og_port = free_port(), free_port()
    direct_url, og_url = f"http://127.0.0.1:{direct_port}", f"http://127.0.0.1:{og_port}"
    direct = bench.start_direct(model.id, direct_port, "direct.log")
    if args.aa:  # A/A check: a second direct engine in OffGrid's place shows the noise floor
        offgrid = bench.start_direct(model.id, og_port, "direct-b.log")
    else:
        offgrid = bench.start_offgrid(og_port)
    try:
        wait_health(direct_url, direct)
        wait_health(og_url, offgrid)
        targets = {"direct": direct_url, "offgrid": og_url}
        for url in targets.values():  # warm-up: loads OffGrid's engine, fills prompt caches
            await decode_rate(url, model.id, 4, 16)
        rates: dict[tuple[str, int], list[float]] = {}
        firsts: dict[str, list[float]] = {"direct": [], "offgrid": []}
        dialects: dict[str, list[float]] = {"openai": [], "ollama": []}  # both on OffGrid
        by_dialect = {
            "openai": lambda: ttft(og_url, model.id),
            "ollama": lambda: ollama_first_line(og_url, model.id),
        }
        names = list(targets)
        relay_proc = psutil.Process(offgrid.pid)
        cpu0 = relay_proc.cpu_times()
        for r in range(args.rounds):
            # finely interleaved, alternating who goes first: drift hits both alike
            for streams in (1, 4):
                for name in names if r % 2 == 0 else names[::-1]:
                    rate = await decode_rate(targets[name], model.id, streams, args.tokens)
                    rates.setdefault((name, streams), []).append(rate)
            for k in range(6):
                for name in names if (r + k) % 2 == 0 else names[::-1]:
                    firsts[name].append(await ttft(targets[name], model.id))
                if not args.aa:  # OpenAI's and Ollama's dialect on OffGrid, in turns
                    for name in list(by_dialect)[:: 1 if k % 2 == 0 else -1]:
                        dialects[name].append(await by_dialect[name]())
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
        cpu1 = relay_proc.cpu_times()
        relay_cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    finally:
        for p in (offgrid, direct):
            p.terminate()
            p.wait(30)

    print(f"\nrelay benchmark: {model.id}, engine {binary.path.name} {binary.version()}")
    print(f"rounds={args.rounds} tokens/stream={args.tokens} threads={args.threads} -np 4\n")
    print(f"{'metric (median)':<30}{'direct':>10}{'offgrid':>10}{'ratio':>9}{'paired':>9}")
    for streams in (1, 4):
        d_runs, o_runs = rates[("direct", streams)], rates[("offgrid", streams)]
        d, o = statistics.median(d_runs), statistics.median(o_runs)
        paired = statistics.median(b / a for a, b in zip(d_runs, o_runs, strict=True))
        label = f"decode tok/s, {streams} stream{'s' if streams > 1 else ''}"
        print(f"{label:<30}{d:>10.1f}{o:>10.1f}{o / d:>9.3f}{paired:>9.3f}")
    if not args.aa:
        relayed = args.rounds * 5 * args.tokens + args.rounds * 6 * 2 * 3
        print(f"{'relay CPU per token, µs':<30}{'':>10}{relay_cpu / relayed * 1e6:>10.0f}")
    d_ttft = statistics.median(firsts["direct"]) * 1000
    o_ttft = statistics.median(firsts["offgrid"]) * 1000
    print(f"{'time to first token, ms':<30}{d_ttft:>10.2f}{o_ttft:>10.2f}{o_ttft / d_ttft:>9.3f}")
    added = statistics.median(
        b - a for a, b in zip(firsts["direct"], firsts["offgrid"], strict=True)
    )
    print(f"\nadded time to first token: {o_ttft - d_ttft:+.2f} ms of the medians,")
    print(f"  {added * 1000:+.2f} ms paired median (goal <= 1 ms, at most 2 ms)")
    print("decode goal: ratio >= 0.99, at least 0.98 ('paired' = median of per-round ratios)")
    if not args.aa:
        pairs = zip(dialects["openai"], dialects["ollama"], strict=True)
        extra = statistics.median(b - a for a, b in pairs)
        print(f"Ollama /api/chat first line vs OpenAI first event: {extra * 1000:+.2f} ms")
        print("  paired median (goal: within 1 ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", type=Path, help="a GGUF file (default: the starter model)")
    parser.add_argument("--gpu-layers", type=int, help="-ngl for both (default: as OffGrid)")
    parser.add_argument(
        "--aa", action="store_true", help="measure direct against a second direct engine"
    )
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
