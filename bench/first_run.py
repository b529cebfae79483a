"""Fresh clone to first token: the README's one command (`./serve.sh`) on a clean clone.

  cold    a clean clone of this checkout and an empty cache folder (OFFGRID_CACHE_DIR):
          the venv is made, the engine built for this CPU, the starter model fetched and
          verified, the server started; then one streamed chat. Seconds from starting
          serve.sh to its first token.
  warm    the same clone run again: the engine and model are cached (goal < 30 s)
  --portable   build every CPU variant instead (`offgrid setup --portable`): the cost
          that the build for this CPU saves, measured the same way

pip's own download cache is used as it is (a fresh machine would also download about
100 MB of wheels: a few seconds on a normal link). Goals (issue 18): cold < 8 minutes on
2 cores, warm < 30 s.

Run: .venv/bin/python bench/first_run.py [--portable] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def first_token(url: str, deadline: float) -> float:
    """Wait for /health, then stream one chat; the moment its first content arrives."""
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/health", timeout=1).status_code == 200:
                break
        except requests.RequestException:
            time.sleep(0.2)
    body = {
        "model": "SmolLM2-135M-Instruct.Q4_1",
        "messages": [{"role": "user", "content": "Say hello."}],
        "max_tokens": 8,
        "stream": True,
    }
    with requests.post(f"{url}/v1/chat/completions", json=body, stream=True, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if line.startswith(b"data: {") and b'"content"' in line:
                return time.monotonic()
    raise RuntimeError("the stream ended without a token")


def run(clone: Path, cache: Path, portable: bool) -> dict[str, object]:
    port = free_port()
    env = {
        **os.environ,
        "OFFGRID_CACHE_DIR": str(cache),
        "OFFGRID_PORT": str(port),
        "OFFGRID_MODELS_DIR": str(clone / ".bench-models"),
        "HOME": str(clone / ".bench-home"),
    }
    args = ["./serve.sh", *(["--portable"] if portable else [])]
    started = time.monotonic()
    log = clone / ".bench-serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            args, cwd=clone, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        first = first_token(f"http://127.0.0.1:{port}", started + 3600)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    engine = next(cache.glob("engine/*/ENGINE.json"), None)
    variants = json.loads(engine.read_text()).get("cpu_variants") if engine else None
    return {"seconds": round(first - started, 1), "cpu_variants": variants}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--portable", action="store_true")
    parser.add_argument("--keep", type=Path, help="make the clone here and keep it")
    args = parser.parse_args()
    top = args.keep or Path(tempfile.mkdtemp(prefix="offgrid-first-run-"))
    clone, cache = top / "clone", top / "cache"
    shutil.rmtree(top, ignore_errors=True)
    top.mkdir(parents=True)
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    cores = os.cpu_count()
    print(f"clean clone of {REPO} at {clone}, empty cache {cache}, {cores} cores", flush=True)
    cold = run(clone, cache, args.portable)
    print(f"cold (clone → first token): {cold['seconds']} s, CPU variants {cold['cpu_variants']}")
    warm = run(clone, cache, args.portable)
    print(f"warm (engine and model cached): {warm['seconds']} s")
    goal_cold, goal_warm = 8 * 60, 30
    cold_s, warm_s = float(str(cold["seconds"])), float(str(warm["seconds"]))
    print(
        f"goals: cold < {goal_cold} s: {'met' if cold_s < goal_cold else 'NOT met'}; "
        f"warm < {goal_warm} s: {'met' if warm_s < goal_warm else 'NOT met'}"
    )
    if not args.keep:
        shutil.rmtree(top, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
