"""Where OffGrid's time per request goes: the relay beside an engine that answers at once.

Starts `offgrid serve` with the tests' fake engine (tokens without delay), so that what is
measured is OffGrid's own work, not the model's. Sends short streamed chats one after
another, first straight to the fake engine, then through OffGrid, and prints:

  time to first token, direct and through OffGrid (median), and what OffGrid adds
  OffGrid's CPU per request (user + system, from /proc)

With --cprofile the server runs under cProfile (slower: that run's times are not the
figures) and the functions that took the most time are printed when it stops, the
profile to cut from (`--sort cumulative` for time with callees).

Run: .venv/bin/python bench/relay_profile.py [--requests 400] [--tokens 8] [--cprofile]
"""

from __future__ import annotations

import argparse
import json
import os
import pstats
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

from offgrid.config import load_settings
from offgrid.models.starter import STARTER, place_model
from relay import wait_health  # bench/relay.py, beside this file

ROOT = Path(__file__).resolve().parent.parent
FAKE_ENGINE = ROOT / "tests" / "fake_engine.py"


def first_token(http: httpx.Client, url: str, model: str, tokens: int) -> float:
    """Seconds to the first content event of one streamed chat (read to its end)."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": tokens,
        "stream": True,
    }
    began = time.perf_counter()
    first = 0.0
    with http.stream("POST", f"{url}/v1/chat/completions", json=body) as resp:
        assert resp.status_code == 200, resp.read()
        for line in resp.iter_lines():
            if not first and line.startswith("data: {"):
                first = time.perf_counter() - began
    return first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--tokens", type=int, default=8)
    parser.add_argument("--cprofile", action="store_true", help="profile the server")
    parser.add_argument("--sort", default="tottime", help="pstats order (e.g. cumulative)")
    parser.add_argument("--filter", default="", help="only functions whose file matches")
    parser.add_argument("--callers", help="also print who calls the functions matching this")
    args = parser.parse_args()

    settings = load_settings(dict(os.environ))
    tmp = Path(tempfile.mkdtemp(prefix="offgrid-profile-"))
    models = tmp / "models"
    models.mkdir()
    place_model(STARTER, models, settings.cache_dir / "downloads")
    port = 20000 + os.getpid() % 20000
    env = {
        **os.environ,
        "HOME": str(tmp),
        "OFFGRID_MODELS_DIR": str(models),
        "OFFGRID_PORT": str(port),
        "OFFGRID_LLAMA_SERVER": str(FAKE_ENGINE),
        "FAKE_ENGINE_TOKEN_MS": "0",
        "OFFGRID_LOG_LEVEL": "warning",
    }
    log = (tmp / "offgrid.log").open("wb")
    argv = [sys.executable, "-m", "offgrid", "serve"]
    if args.cprofile:  # the whole server under cProfile, written when it stops
        wrap = "import sys, cProfile, offgrid.cli; sys.argv = ['offgrid', 'serve']; "
        wrap += f"cProfile.run('offgrid.cli.main()', {str(tmp / 'profile.out')!r})"
        argv = [sys.executable, "-c", wrap]
    server = subprocess.Popen(argv, env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_health(url, server, 60)
        http = httpx.Client(timeout=30)
        model = STARTER.model_id
        first_token(http, url, model, args.tokens)  # loads the fake engine
        [row] = http.get(f"{url}/api/ps").json()["models"]
        direct = f"http://127.0.0.1:{row['port']}"
        times: dict[str, list[float]] = {"direct": [], "offgrid": []}
        for _ in range(50):  # warm both paths
            first_token(http, direct, model, args.tokens)
            first_token(http, url, model, args.tokens)
        proc = psutil.Process(server.pid)
        before = sum(proc.cpu_times()[:2])
        for _ in range(args.requests):  # alternate, so that drift hits both alike
            times["direct"].append(first_token(http, direct, model, args.tokens))
            times["offgrid"].append(first_token(http, url, model, args.tokens))
        cpu = sum(proc.cpu_times()[:2]) - before  # its idle work between included: small
        d, o = (statistics.median(times[k]) * 1000 for k in ("direct", "offgrid"))
        added = statistics.median(b - a for a, b in zip(*times.values(), strict=True)) * 1000
        print(json.dumps({"requests": args.requests, "tokens": args.tokens}))
        print(f"time to first token, direct (fake engine)  {d:7.3f} ms")
        print(f"time to first token, through OffGrid       {o:7.3f} ms")
        print(f"added by OffGrid (paired median)           {added:+7.3f} ms")
        print(f"OffGrid CPU per request                    {cpu / args.requests * 1e6:7.0f} µs")
    finally:
        server.send_signal(signal.SIGINT)  # under cProfile only SIGINT ends it cleanly
        server.wait(30)
        if args.cprofile:
            stats = pstats.Stats(str(tmp / "profile.out"))
            stats.sort_stats(args.sort).print_stats(args.filter, 40)
            if args.callers:
                stats.print_callers(args.callers)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
