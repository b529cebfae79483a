"""Model file handling against the shell tools, in one run.

  import: `offgrid import FILE` (copy + hash in one pass, fsync, verify) ÷ `cp FILE DEST`
          then `sha256sum DEST`                                      goal <= 0.7
  export: `offgrid export ID DEST` (copy + hash in one pass, fsync, read back from the
          medium and hash again) ÷ the same `cp` then `sha256sum`    goal <= 0.7
  list:   warm `Registry.list()` with 1,000 registered models        goal well under 200 ms
  start:  warm `offgrid --help`, and `offgrid list` with those 1,000 models, interpreter
          start included (median of 10 runs)                          goal under 150 ms

Both sides read a source file that is in the page cache (each round runs both, in
alternating order). `cp` does not fsync; OffGrid does, so a `cp; sync; sha256sum` column
is printed as well. The file is the Gemma 3 270M model padded with random bytes to
--size (a GGUF may carry bytes after its tensors).

Run: .venv/bin/python bench/models.py [--rounds 5] [--size 1GiB]
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

from offgrid.config import load_settings
from offgrid.models.registry import Registry
from offgrid.models.starter import GEMMA, STARTER
from offgrid.units import parse_size

OFFGRID = [sys.executable, "-m", "offgrid"]


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run(cmd: list[str], env: dict[str, str] | None = None) -> None:
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)


def make_source(store: Path, dest: Path, size: int) -> Path:
    """Gemma's GGUF followed by random bytes up to ``size``: real, incompressible data."""
    with dest.open("wb") as out:
        out.write((store / GEMMA.file_name).read_bytes())
        while (left := size - out.tell()) > 0:
            out.write(os.urandom(min(left, 64 << 20)))
    return dest


def node_env(root: Path) -> dict[str, str]:
    return {
        **os.environ,
        "HOME": str(root / "home"),
        "OFFGRID_MODELS_DIR": str(root / "models"),
        "OFFGRID_DATA_DIR": str(root / "data"),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--size", default="1GiB")
    parser.add_argument("--models", type=int, default=1000)
    args = parser.parse_args()
    store = load_settings().cache_dir / "test-models"
    tmp = Path(tempfile.mkdtemp(prefix="offgrid-bench-models-", dir=os.environ.get("TMPDIR")))
    try:
        src = make_source(store, tmp / "src.gguf", parse_size(args.size))
        size = src.stat().st_size
        cp_dest = tmp / "cp" / "src.gguf"
        cp_dest.parent.mkdir()
        runs: dict[str, list[float]] = {
            k: [] for k in ("cp+sha", "cp+sync+sha", "import", "export")
        }
        for i in range(args.rounds):
            run(["cat", str(src)], None)  # the source in the page cache for both sides

            def baseline(sync: bool) -> float:
                cp_dest.unlink(missing_ok=True)
                steps = [["cp", str(src), str(cp_dest)], ["sha256sum", str(cp_dest)]]
                if sync:
                    steps.insert(1, ["sync", str(cp_dest)])
                return timed(lambda: [run(s) for s in steps])

            node = tmp / f"node{i}"
            env = node_env(node)
            order = ["base", "ours"] if i % 2 == 0 else ["ours", "base"]
            for side in order:
                if side == "base":
                    runs["cp+sha"].append(baseline(sync=False))
                    runs["cp+sync+sha"].append(baseline(sync=True))
                else:
                    runs["import"].append(
                        timed(lambda env=env: run([*OFFGRID, "import", str(src)], env))
                    )
                    usb = node / "usb"
                    runs["export"].append(
                        timed(
                            lambda env=env, usb=usb: run([*OFFGRID, "export", "src", str(usb)], env)
                        )
                    )
            shutil.rmtree(node)
        med = {k: statistics.median(v) for k, v in runs.items()}
        print(f"file: {size / 1e9:.2f} GB, {args.rounds} rounds, medians")
        for k, v in med.items():
            print(f"  {k:12} {v:6.2f} s  ({size / v / 1e6:5.0f} MB/s)")
        for k in ("import", "export"):
            paired = statistics.median(o / b for o, b in zip(runs[k], runs["cp+sha"], strict=True))
            print(
                f"{k} ÷ (cp then sha256sum): {med[k] / med['cp+sha']:.3f} (paired {paired:.3f}), "
                f"÷ (cp, sync, sha256sum): {med[k] / med['cp+sync+sha']:.3f}   goal <= 0.7"
            )
        list_bench(store, tmp / "many", args.models)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def list_bench(store: Path, root: Path, count: int) -> None:
    """Time listing ``count`` registered models (hard links of the starter model)."""
    env = node_env(root)
    models = Path(env["OFFGRID_MODELS_DIR"])
    models.mkdir(parents=True)
    for i in range(count):
        os.link(store / STARTER.file_name, models / f"model-{i:04}.gguf")
    settings = load_settings(env)
    cold = timed(lambda: Registry.for_settings(settings).list())  # reads every header once
    fresh = [timed(lambda: Registry.for_settings(settings).list()) for _ in range(5)]
    registry = Registry.for_settings(settings)
    registry.list()
    warm = [timed(registry.list) for _ in range(10)]
    assert len(registry.list()) == count
    print(
        f"list of {count} models: first {cold * 1000:.0f} ms; warm in a new process "
        f"{statistics.median(fresh) * 1000:.1f} ms; warm in the server "
        f"{statistics.median(warm) * 1000:.1f} ms   goal well under 200 ms"
    )
    help_s, list_s = (startup([*OFFGRID, arg], env) for arg in ("--help", "list"))
    print(
        f"start-up, warm, median of 10: `offgrid --help` {help_s * 1000:.0f} ms, "
        f"`offgrid list` with {count} models {list_s * 1000:.0f} ms   goal under 150 ms"
    )


def startup(cmd: list[str], env: dict[str, str]) -> float:
    """Median wall time of ``cmd`` over 10 runs, after 2 that warm the caches."""
    for _ in range(2):
        run(cmd, env)
    return statistics.median(timed(lambda: run(cmd, env)) for _ in range(10))


if __name__ == "__main__":
    main()
