"""Installing the service from a pack against installing it from source, in real systemd
containers (tests/nspawn.py), and the time from starting install.sh to the first token.

  pack         `offgrid pack` of this checkout for python 3.11, 3.12 and 3.13 with the
               starter model: its size, part by part, and how long making it took (the
               wheels come from the per-user cache after a first run)
  from pack    a container with no network at all (--private-network, this machine's pip
               sources and caches hidden): `DIR/install.sh --cpu-only`, which checks the
               whole pack, installs from the wheelhouse and the packed engine (no compile)
  from source  a container with a network (slirp4netns) and the same hiding:
               `source/install.sh --cpu-only` from the same tree, pip resolving and
               downloading from the package index. By default the engine is the build
               already made (--engine: what a machine that built it once reuses); with
               --full install.sh compiles it (`offgrid setup`, about 7 minutes on 2
               cores; the llama.cpp sources come from the download cache, not the index)
  first token  after each install, a streamed chat with the starter model (loaded on
               demand): seconds from starting install.sh to its first token
  goal         from a pack, the first token in under 90 s on 2 cores

The containers are pinned to --cpus CPUs (default 2: the size of box the goal is for).

Run as root: .venv/bin/python bench/install.py [--full] [--cpus 2] [--rounds 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from nspawn import Machine, local_pip_sources, nspawn_available
from offgrid.config import load_settings
from offgrid.engine.build import SOURCE
from offgrid.models.starter import STARTER, place_model
from offgrid.pack import PARTS
from offgrid.pack.wheels import pip_environment
from offgrid.units import human_size

ROOT = Path(__file__).resolve().parents[1]
PACK_IN = "/mnt/pack"
HIDDEN = ("/opt/offgrid", "/etc/offgrid", "/var/lib/offgrid", "/var/cache/offgrid")
FIRST_TOKEN = """
import json, sys, time, urllib.request
body = {"model": sys.argv[1], "stream": True, "max_tokens": 16, "temperature": 0,
        "messages": [{"role": "user", "content": "Say hello."}]}
req = urllib.request.Request("http://127.0.0.1:11611/v1/chat/completions",
                             data=json.dumps(body).encode(),
                             headers={"Content-Type": "application/json"})
start = time.monotonic()
with urllib.request.urlopen(req, timeout=300) as reply:
    for line in reply:
        if line.startswith(b"data: {"):
            if json.loads(line[6:])["choices"][0]["delta"].get("content"):
                print(time.monotonic() - start)
                break
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="compile the engine from source")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs the containers may use")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    why = nspawn_available()
    if why:
        sys.exit(f"bench/install.py needs containers: {why}")
    cpus = sorted(os.sched_getaffinity(0))[: args.cpus]
    os.sched_setaffinity(0, cpus)  # inherited by systemd-nspawn and everything it starts
    settings = load_settings()
    with tempfile.TemporaryDirectory(prefix="offgrid-bench-") as tmp_name:
        tmp = Path(tmp_name)
        pack, made = make_pack(tmp, settings.cache_dir)
        info = json.loads((pack / "pack.json").read_text())
        sizes = info["sizes"]
        parts = ", ".join(f"{p} {human_size(sizes[p])}" for p in PARTS)
        print(f"pack: {human_size(sizes['total'])} ({parts}); made in {made:.1f} s")
        print(f"      pythons {', '.join(info['pythons'])}; engine {info['engine']['backend']}")
        print(f"containers on {len(cpus)} CPU(s): {cpus}")
        rows: dict[str, list[tuple[float, float]]] = {"pack": [], "source": []}
        for _ in range(args.rounds):
            rows["pack"].append(from_pack(tmp, pack, settings.cache_dir))
            rows["source"].append(from_source(tmp, pack, settings.cache_dir, full=args.full))
    report(rows, full=args.full)


def make_pack(tmp: Path, cache: Path) -> tuple[Path, float]:
    """A pack of this checkout, made by the CLI in a home of its own; the path and seconds."""
    models = tmp / "models"
    place_model(STARTER, models, cache / "downloads")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OFFGRID_", "XDG_"))}
    env |= {"HOME": str(tmp / "home"), "XDG_DATA_HOME": str(tmp / "data")}
    env |= {"OFFGRID_MODELS_DIR": str(models), "OFFGRID_CACHE_DIR": str(cache)}
    dest = tmp / "pack"
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "offgrid", "pack", str(dest), "--models", STARTER.model_id],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if done.returncode != 0:
        sys.exit(f"offgrid pack failed:\n{done.stdout}\n{done.stderr}")
    return dest, time.monotonic() - started


def from_pack(tmp: Path, pack: Path, cache: Path) -> tuple[float, float]:
    """(install s, s from starting install.sh to the first token), with no network."""
    hide = (*local_pip_sources(), *HIDDEN, str(cache))
    with Machine(tmp / "m-pack", bind_ro={str(pack): PACK_IN}, hide=hide) as m:
        assert m.run("ip -4 route show").stdout.strip() == "", "the container has a route out"
        return timed_install(m, f"{PACK_IN}/install.sh --cpu-only", {})


def from_source(tmp: Path, pack: Path, cache: Path, *, full: bool) -> tuple[float, float]:
    """(install s, s to the first token) from the source tree, pip on the package index."""
    binds = {str(pack): PACK_IN}
    if full:  # install.sh's `offgrid setup` finds the llama.cpp sources in its cache
        sdist = next((cache / "downloads").glob(f"llama_cpp_python-{SOURCE.version}.tar.gz"))
        binds[str(sdist)] = f"/var/cache/offgrid/downloads/{sdist.name}"
    engine = "" if full else f" --engine {PACK_IN}/engine"
    command = f"bash {PACK_IN}/source/install.sh --cpu-only"
    command += f" --models {PACK_IN}/models/offgrid-models"
    # How pip reaches the index (a certificate, a proxy), none of its local sources.
    env = {k: v for k, v in pip_environment(os.environ).items() if k.startswith("PIP_")}
    hide = (*local_pip_sources(), *HIDDEN[:3], str(cache))
    with Machine(tmp / "m-source", bind_ro=binds, network=True, hide=hide) as m:
        return timed_install(m, command + engine, env)


def timed_install(m: Machine, command: str, env: dict[str, str]) -> tuple[float, float]:
    started = time.monotonic()
    done = m.run(command, timeout=3600, env=env, check=False)
    installed = time.monotonic() - started
    if done.returncode != 0 or "== Done in" not in done.stdout:
        sys.exit(f"{command} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr}")
    python = "/opt/offgrid/venv/bin/python"
    script = FIRST_TOKEN.replace("'", "'\\''")
    token = m.run(f"{python} -c '{script}' {STARTER.model_id}", timeout=300)
    return installed, installed + float(token.stdout.strip())


def report(rows: dict[str, list[tuple[float, float]]], *, full: bool) -> None:
    pack_install = statistics.median(r[0] for r in rows["pack"])
    pack_first = statistics.median(r[1] for r in rows["pack"])
    src_install = statistics.median(r[0] for r in rows["source"])
    src_first = statistics.median(r[1] for r in rows["source"])
    how = "engine compiled" if full else "engine build reused, pip on the index"
    print(f"from pack (no network): install {pack_install:6.1f} s, first token {pack_first:6.1f} s")
    print(f"from source ({how}): install {src_install:6.1f} s, first token {src_first:6.1f} s")
    ratio = pack_install / src_install, pack_first / src_first
    print(f"pack ÷ source: install {ratio[0]:.2f}, first token {ratio[1]:.2f}")
    goal = "met" if pack_first < 90 else "NOT met"
    print(f"goal: first token from a pack in under 90 s: {goal} ({pack_first:.1f} s)")


if __name__ == "__main__":
    main()
