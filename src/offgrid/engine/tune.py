"""``offgrid tune MODEL``: measure this box for one model and keep the engine flags that
serve it fastest; the scheduler starts the model with them from then on.

Each trial starts llama-server on the model with one set of flags and sends it the same
three chats, shaped like what a box like this is asked (``_chats``): a story, a summary of
a page of code, and that code edited — no prompt cache, at most ``GENERATE`` tokens each,
after a warm-up. Its score is the tokens generated per second of the three whole requests,
prompt processing included, as a client waits for them. The search starts from
llama-server's own defaults (the baseline) and tries one knob at a time, keeping a change
only when it is at least ``BETTER`` faster: threads, draftless speculation (drafts looked
up in the text so far), flash attention, the KV cache's type, the micro-batch, and a draft
model when a smaller installed model shares this one's vocabulary; a change that looks
better is measured again, in turn with the flags it would replace, before it is kept. It
starts no trial (nor a confirmation) that the time budget (3 minutes by default) has no
room left for, at the baseline's pace.

The result is kept per model in ``<data dir>/tuning.json`` with the machine it was
measured on (its CPU and cores): flags tuned on another machine are not used here.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import secrets
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from offgrid.atomic_files import atomic_writer
from offgrid.errors import EngineError
from offgrid.models.model_info import ModelInfo

__all__ = ["Trial", "Tuning", "load_tuned", "measure", "save", "tune"]

GENERATE = 128
BETTER = 1.03  # a change is kept when at least this much faster (the noise is about 2 %)
BUDGET_S = 170.0


@dataclass(frozen=True)
class Trial:
    """One set of flags, as measured."""

    args: tuple[str, ...]
    score: float  # tokens generated per second of the whole requests
    prompt_tps: float
    decode_tps: float


@dataclass
class Tuning:
    """What ``tune`` found: the flags kept, their score and llama-server's defaults'."""

    model_id: str
    args: tuple[str, ...]
    score: float
    baseline: float
    machine: str
    trials: list[Trial] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ratio(self) -> float:
        return self.score / self.baseline if self.baseline else 0.0


@functools.cache
def machine() -> str:
    """What tuned flags are valid for: the CPU, its cores and the engine."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            cpu = next((x.split(":", 1)[1].strip() for x in info if "model name" in x), cpu)
    except OSError:
        pass
    return f"{cpu} × {os.cpu_count()}"


def _knobs(cpus: int, drafts: list[Path]) -> Iterator[tuple[str, list[tuple[str, ...]]]]:
    """Each knob: its name and the flags to try for it (the defaults are the baseline)."""
    counts = sorted({1, max(1, cpus // 2), cpus})
    yield "threads", [("--threads", str(n), "--threads-batch", str(n)) for n in counts]
    yield "speculation", [("--spec-type", t) for t in ("ngram-map-k", "ngram-mod", "ngram-simple")]
    yield "flash attention", [("--flash-attn", "on"), ("--flash-attn", "off")]
    yield "KV cache", [("--cache-type-k", t, "--cache-type-v", t) for t in ("q8_0", "q4_0")]
    yield "micro-batch", [("--ubatch-size", str(n)) for n in (128, 256, 1024)]
    yield (
        "draft model",
        [
            ("--spec-type", "draft-simple", "--model-draft", str(p), "--spec-draft-n-max", "8")
            for p in drafts
        ],
    )


def _chats() -> list[list[dict[str, str]]]:
    """The three chats of a trial: a story, then a page of this program's own code (text
    that ships with it) summed up, then edited."""
    code = (Path(__file__).resolve().parent.parent / "scheduler" / "queues.py").read_text()
    page = code[:3000]
    return [
        [{"role": "user", "content": "Tell me a long story about a lighthouse keeper."}],
        [{"role": "user", "content": f"Summarize what this code does:\n\n{page}"}],
        [
            {
                "role": "user",
                "content": "Rename the class Slot to Place everywhere in this code and output "
                f"the whole code, changed, with nothing else:\n\n{page}",
            }
        ],
    ]


def tune(
    binary: Path,
    model: ModelInfo,
    drafts: list[Path],
    *,
    budget: float = BUDGET_S,
    heard: Callable[[str, Trial | None], None] = lambda _k, _t: None,
) -> Tuning:
    """Search the flags for ``model`` (``heard`` hears each trial: None for one that
    failed, such as a KV type this engine refuses without flash attention)."""
    began = time.monotonic()
    base = measure(binary, model, ())
    heard("llama-server defaults", base)
    best, kept = base, dict[str, tuple[str, ...]]()
    trials = [base]
    per_trial = time.monotonic() - began

    def room(count: int) -> bool:  # for ``count`` more trials within the budget
        return time.monotonic() - began + count * per_trial <= budget

    for name, options in _knobs(os.cpu_count() or 1, drafts):
        for flags in options:
            if not room(1):
                break
            args = tuple(a for k, v in ({**kept, name: flags}).items() for a in v)
            try:
                trial = measure(binary, model, args)
            except EngineError:
                heard(name, None)
                continue
            trials.append(trial)
            heard(name, trial)
            better = trial.score > best.score * BETTER
            if better and room(2) and _confirmed(binary, model, trial, best):
                best, kept = trial, {**kept, name: flags}
    return Tuning(
        model.id, best.args, best.score, base.score, machine(), trials, time.monotonic() - began
    )


def _confirmed(binary: Path, model: ModelInfo, trial: Trial, best: Trial) -> bool:
    """Whether ``trial`` still beats ``best`` when both are measured once more, in turn: a
    shared machine's noise (several percent) must not pick flags that are no better."""
    try:
        again, best_again = measure(binary, model, trial.args), measure(binary, model, best.args)
    except EngineError:
        return False
    return trial.score + again.score > (best.score + best_again.score) * BETTER


def measure(binary: Path, model: ModelInfo, args: tuple[str, ...]) -> Trial:
    """Start the engine with ``args`` and time the request twice (after a warm-up)."""
    import httpx2

    from offgrid.engine.process import die_with_parent, free_port

    port, key = free_port(), secrets.token_hex(16)
    argv = [str(binary), "--model", str(model.path), "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(
        [*argv, "--api-key", key, "--no-webui", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=die_with_parent,
    )
    url, headers = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {key}"}
    try:
        _wait_ready(proc, url, headers)
        chats = _chats()
        runs = []
        for messages in [chats[0], *chats]:  # a warm-up, then each chat timed
            body = {
                "messages": messages,
                "max_tokens": GENERATE,
                "cache_prompt": False,
                "temperature": 0,
            }
            began = time.perf_counter()
            got = httpx2.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=300)
            took = time.perf_counter() - began
            if got.status_code != 200:
                raise EngineError(f"the engine answered {got.status_code} with {args}")
            answer = got.json()
            runs.append((took, answer["usage"]["completion_tokens"], answer["timings"]))
        timed = runs[1:]
        return Trial(
            args,
            sum(n for _, n, _ in timed) / sum(t for t, _, _ in timed),
            statistics.median(float(x["prompt_per_second"]) for _, _, x in timed),
            statistics.median(float(x["predicted_per_second"]) for _, _, x in timed),
        )
    finally:
        proc.kill()
        proc.wait()


def _wait_ready(proc: subprocess.Popen[bytes], url: str, headers: dict[str, str]) -> None:
    import httpx2

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise EngineError("the engine refused these flags")
        try:
            if httpx2.get(f"{url}/health", headers=headers, timeout=2).status_code == 200:
                return
        except httpx2.HTTPError:
            pass
        time.sleep(0.1)
    raise EngineError("the engine did not load within 2 minutes")


def save(data_dir: Path, tuning: Tuning) -> Path:
    """Keep ``tuning`` in ``<data dir>/tuning.json`` (other models' entries kept)."""
    path = data_dir / "tuning.json"
    entries = _read(path)
    entries[tuning.model_id] = {
        "args": list(tuning.args),
        "tokens_per_second": round(tuning.score, 2),
        "baseline_tokens_per_second": round(tuning.baseline, 2),
        "machine": tuning.machine,
        "tuned_at": time.time(),
        "trials": [asdict(t) for t in tuning.trials],
    }
    data_dir.mkdir(parents=True, exist_ok=True)
    with atomic_writer(path) as fh:
        fh.write(json.dumps(entries, indent=2).encode())
    return path


def load_tuned(data_dir: Path, model_id: str) -> tuple[str, ...]:
    """The flags tuned for ``model_id`` on this machine; none if never tuned here. (Asked
    at every placement and estimate: the file is read again only when it changed.)"""
    path = data_dir / "tuning.json"
    try:
        stamp = path.stat().st_mtime_ns
    except OSError:
        return ()
    entry = _read_cached(path, stamp).get(model_id)
    if not isinstance(entry, dict) or entry.get("machine") != machine():
        return ()
    return tuple(str(a) for a in entry.get("args", []))


@functools.lru_cache(maxsize=4)
def _read_cached(path: Path, _stamp: int) -> dict[str, Any]:
    return _read(path)


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
