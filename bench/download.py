"""Downloads through OffGrid against curl, from the same local Hub, in one run.

  library:  `fetch_model`: the transfer with sha256 and fsync in the same pass,
            verification, registration: OffGrid's throughput
  offgrid:  the whole `offgrid download-hf REPO` command: the above plus start-up and the
            Hub lookup, a fixed cost printed apart
  curl:     `curl -o FILE URL` of the same file, and `curl -o FILE URL; sync`
  goal: throughput through OffGrid ÷ curl >= 0.95

The Hub is tests/fake_hub.py on loopback. Two links are measured (--links):
  unlimited  the file goes out with sendfile(2) from the page cache, so the clients set
             the pace; OffGrid, which fsyncs what it writes, is then bound by the disk,
             and curl, which does not, by memory: `curl; sync` is the like-for-like figure;
  100M       the server paces the file at 100 MB/s, a fast real link (the setup phase's
             links are slower still): the network sets the pace, as it does in the field.
Each round runs every client once, in a rotating order, each into a fresh folder; the
written file is deleted after each. The file is the Gemma 3 270M model padded with random
bytes to --size.

Run: .venv/bin/python bench/download.py [--rounds 5] [--size 512MiB] [--links 0,100M]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from fake_hub import FakeHub
from models import make_source
from offgrid.config import load_settings
from offgrid.hub import client
from offgrid.hub.download import fetch_model
from offgrid.models.registry import Registry
from offgrid.units import parse_size

OFFGRID = [sys.executable, "-m", "offgrid"]
REPO = "bench/big-GGUF"
NAME = "big-Q4_K_M.gguf"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--size", default="512MiB")
    parser.add_argument("--links", default="0,100M", help="server rates; 0 = unlimited")
    args = parser.parse_args()
    size = parse_size(args.size)
    store = load_settings().cache_dir / "test-models"
    with tempfile.TemporaryDirectory(dir=Path.home()) as tmp_name, FakeHub() as hub:
        tmp = Path(tmp_name)
        source = make_source(store, tmp / "source.gguf", size)
        hub.add(REPO, {NAME: source})
        os.environ["HF_ENDPOINT"] = hub.url
        url = client.file_url(REPO, "main", NAME)
        (remote,) = client.repo_models(REPO)
        subprocess.run(["curl", "-s", "-o", "/dev/null", url], check=True)  # warm the cache

        def fresh() -> Path:
            out = Path(tempfile.mkdtemp(dir=tmp))
            return out

        def curl(sync: bool) -> Callable[[], float]:
            def go() -> float:
                out = fresh()
                t0 = time.perf_counter()
                subprocess.run(["curl", "-s", "-f", "-o", str(out / NAME), url], check=True)
                if sync:
                    os.sync()
                took = time.perf_counter() - t0
                shutil.rmtree(out)
                return took

            return go

        def library() -> float:
            out = fresh()
            registry = Registry([out / "models"], out / "registry.sqlite")
            t0 = time.perf_counter()
            fetch_model(remote, registry)
            took = time.perf_counter() - t0
            registry.close()
            shutil.rmtree(out)
            return took

        def command() -> float:
            out = fresh()
            env = {
                **os.environ,
                "OFFGRID_MODELS_DIR": str(out / "models"),
                "OFFGRID_DATA_DIR": str(out / "data"),
            }
            t0 = time.perf_counter()
            subprocess.run(
                [*OFFGRID, "download-hf", REPO], env=env, check=True, stdout=subprocess.DEVNULL
            )
            took = time.perf_counter() - t0
            shutil.rmtree(out)
            return took

        clients: dict[str, Callable[[], float]] = {
            "curl": curl(False),
            "curl+sync": curl(True),
            "library": library,
            "offgrid": command,
        }
        for link in args.links.split(","):
            hub.rate = parse_size(link) or None
            print(
                f"\nlink {link if hub.rate else 'unlimited'}: file {size / 1e9:.2f} GB, "
                f"{args.rounds} rounds, medians:"
            )
            report(size, measure(clients, args.rounds))


def measure(clients: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Seconds of each client, each round in a rotating order."""
    runs: dict[str, list[float]] = {k: [] for k in clients}
    names = list(clients)
    for r in range(rounds):
        for k in names[r % len(names) :] + names[: r % len(names)]:
            os.sync()
            runs[k].append(clients[k]())
    return runs


def report(size: int, runs: dict[str, list[float]]) -> None:
    med = {k: statistics.median(v) for k, v in runs.items()}
    for k, t in med.items():
        print(f"  {k:10} {t:6.2f} s  ({size / t / 1e6:6.0f} MB/s)")
    paired = statistics.median(c / o for o, c in zip(runs["library"], runs["curl"], strict=True))
    print(
        f"throughput through OffGrid ÷ curl: {med['curl'] / med['library']:.3f} "
        f"(paired {paired:.3f}), ÷ (curl; sync): {med['curl+sync'] / med['library']:.3f}"
        "   goal >= 0.95"
    )
    fixed = statistics.median(o - f for o, f in zip(runs["offgrid"], runs["library"], strict=True))
    print(f"the command's fixed cost (start-up, Hub lookup): {fixed:.2f} s")


if __name__ == "__main__":
    main()
