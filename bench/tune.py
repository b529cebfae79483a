"""`offgrid tune` against llama-server's defaults (issue 18): for each chat model here, run
the search (its time counts: goal under 3 minutes), then time the same request with the
flags it kept and with llama-server's defaults, in turns, and print the ratio of tokens/s
(goal ≥ 1.2 on at least one model, never below 1.0).

Run: .venv/bin/python bench/tune.py [--rounds 4] [--budget 170]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from conftest import REAL_ENV, link_models
from offgrid.config import load_settings
from offgrid.engine.build import find_engine
from offgrid.engine.tune import measure, tune
from offgrid.models.registry import Registry
from offgrid.models.starter import GEMMA, STARTER, place_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--budget", type=float, default=170.0)
    args = parser.parse_args()
    settings = load_settings(REAL_ENV)
    store = settings.cache_dir / "test-models"
    for model in (STARTER, GEMMA):
        place_model(model, store, settings.cache_dir / "downloads")
    tmp = Path(tempfile.mkdtemp(prefix="offgrid-tune-"))
    names = {m.file_name: m.file_name for m in (STARTER, GEMMA)}
    registry = Registry([link_models(store, tmp / "models", names)], tmp / "registry.sqlite")
    binary = find_engine(settings).path
    for model in (STARTER, GEMMA):
        info = registry.get(model.model_id)
        found = tune(binary, info, [], budget=args.budget)
        tuned, default = [], []
        for _ in range(args.rounds):
            tuned.append(measure(binary, info, found.args))
            default.append(measure(binary, info, ()))
        t, d = (statistics.median(x.score for x in runs) for runs in (tuned, default))
        td, dd = (statistics.median(x.decode_tps for x in runs) for runs in (tuned, default))
        flags = " ".join(found.args) or "(the defaults)"
        print(f"{model.model_id}: search {found.seconds:.0f} s, kept {flags}")
        print(
            f"  three chats (story, summary, code edit; whole requests): tuned {t:.1f} "
            f"tok/s vs defaults {d:.1f}: {t / d:.2f}×"
        )
        print(f"  decode alone: tuned {td:.1f} tok/s vs defaults {dd:.1f}: {td / dd:.2f}×")


if __name__ == "__main__":
    main()
