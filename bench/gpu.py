"""GPU placement: what OffGrid planned against what the engines really took.

Needs a GPU engine (`offgrid setup --cuda`) and an NVIDIA GPU. It writes models with
random weights (bench/synth_model.py; the tokenizer comes from --donor), then:

  calibrate  direct llama-server at several -ngl: OffGrid's estimate of RAM and VRAM
             against the engine's own buffer report, its VRAM (NVML) and its RSS
  full       `offgrid serve`, no limit: every layer goes to the GPU
  partial    OFFGRID_GPU_MEMORY too small for the model: the layers that fit go to the
             GPU, the rest stay on the CPU, and the engine stays under the limit
  evict      a limit that holds one model: loading a second one unloads the idle first
             and gives the second every layer
  busy       the same limit while the first model streams: the second starts at once
             with the GPU memory that is free, the busy one is not stopped

Without a GPU (--smoke, tiny models) it runs the same steps on the CPU: a check of the
script itself.

Prints a JSON report (and writes it to --out). Run:
  .venv/bin/python bench/gpu.py --donor ~/.cache/offgrid/test-models/SmolLM2-135M-Instruct.Q4_1.gguf
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil
import requests

from offgrid.config import load_settings
from offgrid.engine.build import find_engine
from offgrid.engine.process import EngineOptions, build_argv, engine_env, free_port
from offgrid.models.registry import Registry
from offgrid.placement import MIB, Memory, footprint
from offgrid.resources import gpus
from synth_model import write_model  # beside this script

HELLO = [{"role": "user", "content": "Hi"}]
BUFFER = re.compile(r"(\S+) (model|KV|compute) buffer size\s*=\s*([\d.]+) MiB")
OFFLOADED = re.compile(r"offloaded (\d+)/(\d+) layers to GPU")


def vram_of(pid: int) -> int | None:
    """GPU memory the process uses, from the driver (NVML); None without a GPU."""
    import pynvml

    try:
        pynvml.nvmlInit()
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if proc.pid == pid and proc.usedGpuMemory is not None:
                    return int(proc.usedGpuMemory)
    except pynvml.NVMLError:
        pass
    return None


def engine_report(log: Path, pid: int) -> dict[str, Any]:
    """What the engine says it allocated, and what the OS and driver see."""
    text = log.read_text(errors="replace")
    buffers: dict[str, float] = {}
    for device, kind, mib in BUFFER.findall(text):
        buffers[f"{device} {kind}"] = buffers.get(f"{device} {kind}", 0.0) + float(mib)
    off = OFFLOADED.findall(text)
    return {
        "offloaded": f"{off[-1][0]}/{off[-1][1]}" if off else None,
        "buffers_mib": buffers,
        "vram_mib": (vram_of(pid) or 0) / MIB,
        "rss_mib": psutil.Process(pid).memory_info().rss / MIB,
    }


def wait_until(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {what}")


def healthy(url: str) -> bool:
    try:
        return requests.get(f"{url}/health", timeout=1).status_code == 200
    except requests.RequestException:
        return False


def chat(url: str, model: str, tokens: int = 8) -> None:
    body = {"model": model, "messages": HELLO, "max_tokens": tokens, "temperature": 0}
    resp = requests.post(f"{url}/v1/chat/completions", json=body, timeout=300)
    assert resp.status_code == 200, resp.text


def calibrate(tmp: Path, models: Path, model_id: str, layer_counts: list[int]) -> list[Any]:
    """Direct engines at each -ngl: estimate against reality."""
    binary = find_engine(load_settings())
    model = Registry([models], tmp / "index.sqlite").get(model_id)
    options = EngineOptions(context=4096, parallel=4)
    fp = footprint(model.size, model.gguf, context=4096, parallel=4)
    rows = []
    for ngl in layer_counts:
        port = free_port()
        log = tmp / f"direct-{model_id}-{ngl}.log"
        argv = build_argv(binary.path, model, replace(options, gpu_layers=ngl), port)
        with log.open("wb") as out:
            env = engine_env(replace(options, gpu_layers=ngl))
            proc = subprocess.Popen(argv, stdout=out, stderr=out, start_new_session=True, env=env)
        url = f"http://127.0.0.1:{port}"
        try:
            up = lambda p=proc, u=url: p.poll() is not None or healthy(u)  # noqa: E731
            wait_until(up, 300, "the engine")
            chat(url, model_id)
            need = fp.need(ngl)
            rows.append(
                {
                    "model": model_id,
                    "ngl": ngl,
                    "estimate_ram_mib": need.ram / MIB,
                    "estimate_vram_mib": need.vram / MIB,
                    **engine_report(log, proc.pid),
                }
            )
        finally:
            proc.terminate()
            proc.wait(30)
        print(json.dumps(rows[-1]), file=sys.stderr)
    return rows


class Serve:
    """`offgrid serve` on the synthetic models with extra settings."""

    def __init__(self, tmp: Path, models: Path, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / f"serve-{self.port}.log"
        full = {
            **os.environ,
            "OFFGRID_PORT": str(self.port),
            "OFFGRID_MODELS_DIR": str(models),
            "OFFGRID_MAX_CONTEXT": "4096",
            "OFFGRID_PARALLEL": "4",
            "OFFGRID_KEEP_ALIVE": "-1",
            **env,
        }
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "offgrid", "serve"], env=full, stdout=out, stderr=out
            )
        wait_until(lambda: self.proc.poll() is not None or healthy(self.url), 60, "serve")
        assert self.proc.poll() is None, self.log.read_text()

    def ps(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = requests.get(f"{self.url}/api/ps", timeout=10).json()["models"]
        return rows

    def row(self, model_id: str) -> dict[str, Any]:
        row = next(r for r in self.ps() if r["id"] == model_id)
        log = Path(self.env_cache()) / "logs" / f"engine-{model_id}.log"
        return {
            "id": model_id,
            "gpu_layers": row.get("gpu_layers"),
            "estimate_ram_mib": row["ram_bytes"] / MIB,
            "estimate_vram_mib": row["vram_bytes"] / MIB,
            **engine_report(log, int(row["pid"])),
        }

    def env_cache(self) -> str:
        return os.environ.get("OFFGRID_CACHE_DIR") or str(load_settings().cache_dir)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)


def scenarios(tmp: Path, models: Path, big: str, twin: str, big_need: Memory) -> dict[str, Any]:
    report: dict[str, Any] = {}
    srv = Serve(tmp, models)
    try:
        chat(srv.url, big)
        report["full"] = srv.row(big)
    finally:
        srv.stop()
    limit = big_need.vram // 2
    srv = Serve(tmp, models, OFFGRID_GPU_MEMORY=str(limit))
    try:
        chat(srv.url, big)
        report["partial"] = {"limit_mib": limit / MIB, **srv.row(big)}
    finally:
        srv.stop()
    limit = big_need.vram * 3 // 2
    srv = Serve(tmp, models, OFFGRID_GPU_MEMORY=str(limit))
    try:
        chat(srv.url, big)
        chat(srv.url, twin)
        loaded = [r["id"] for r in srv.ps()]
        report["evict"] = {"limit_mib": limit / MIB, "loaded": loaded, **srv.row(twin)}
        # busy: a long stream on `twin` while `big` is asked for
        body = {
            "model": twin,
            "messages": HELLO,
            "max_tokens": 4000,
            "stream": True,
            "ignore_eos": True,
        }
        streaming = threading.Event()

        def stream() -> None:
            url = f"{srv.url}/v1/chat/completions"
            with (
                contextlib.suppress(requests.RequestException),  # cut when the server stops
                requests.post(url, json=body, stream=True, timeout=300) as resp,
            ):
                for _ in resp.iter_lines():
                    streaming.set()

        thread = threading.Thread(target=stream, daemon=True)
        thread.start()
        wait_until(streaming.is_set, 60, "the stream")
        t0 = time.monotonic()
        chat(srv.url, big)
        report["busy"] = {
            "loaded": [r["id"] for r in srv.ps()],
            "seconds_to_answer": time.monotonic() - t0,
            "still_streaming": thread.is_alive(),
            **srv.row(big),
        }
    finally:
        srv.stop()
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--donor", type=Path, required=True)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--embd", type=int, default=2048)
    parser.add_argument("--ff", type=int, default=5632)
    parser.add_argument("--smoke", action="store_true", help="tiny models, GPU or not")
    args = parser.parse_args()
    os.environ["LLAMA_ARG_LOG_VERBOSITY"] = "4"  # engines log their buffer sizes
    if args.smoke:
        args.layers, args.embd, args.ff = 4, 256, 704
    elif not gpus():
        raise SystemExit("no NVIDIA GPU is visible (--smoke runs the steps on the CPU)")
    tmp = Path(tempfile.mkdtemp(prefix="offgrid-gpu-"))
    models = tmp / "models"
    models.mkdir()
    shape = argparse.Namespace(
        layers=args.layers,
        embd=args.embd,
        ff=args.ff,
        heads=16,
        kv_heads=4,
        ctx=8192,
        tied=False,
    )
    write_model(models / "big.gguf", args.donor, shape)
    os.link(models / "big.gguf", models / "twin.gguf")
    small = argparse.Namespace(
        **{**shape.__dict__, "layers": 4, "embd": 512, "ff": 1408, "heads": 8, "kv_heads": 2}
    )
    small.tied = True
    write_model(models / "small-tied.gguf", args.donor, small)
    model = Registry([models], tmp / "index.sqlite").get("big")
    fp = footprint(model.size, model.gguf, context=4096, parallel=4)
    n = fp.max_gpu_layers
    report: dict[str, Any] = {
        "gpus": [g.__dict__ for g in gpus()],
        "engine": str(find_engine(load_settings()).path),
        "calibrate": calibrate(tmp, models, "big", [0, 1, n // 2, n])
        + calibrate(tmp, models, "small-tied", [0, 5]),
    }
    report.update(scenarios(tmp, models, "big", "twin", fp.need(n)))
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
