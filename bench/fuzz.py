"""The long fuzz: 10,000 requests from the server's OpenAPI schema (tests/fuzz.py) against
the real engine and the starter model, fresh examples each run. Prints the statuses seen,
every unintended 5xx, and whether the server still chats afterwards. Goal: 0 unintended
5xx, the server up.

Run: .venv/bin/python bench/fuzz.py [--per-operation 200]   (hypothesis stops early where
     an operation has fewer distinct examples: 200 gives about 10,000 requests)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from conftest import REAL_ENV, STARTER_ID, link_models, start_server
from fuzz import SERVER_ENV, fuzz_then_chat
from offgrid.config import load_settings
from offgrid.engine.build import find_engine
from offgrid.models.starter import STARTER, place_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--per-operation", type=int, default=200, help="examples per mode")
    args = parser.parse_args()
    settings = load_settings(REAL_ENV)
    store = settings.cache_dir / "test-models"
    place_model(STARTER, store, settings.cache_dir / "downloads")
    tmp = Path(tempfile.mkdtemp(prefix="offgrid-fuzz-"))
    (tmp / "home").mkdir()
    models = link_models(store, tmp / "m", {STARTER.file_name: STARTER.file_name})
    env = {**SERVER_ENV, "OFFGRID_MAX_CONTEXT": "512"}  # as the quoted runs had it
    srv = start_server(tmp, models, find_engine(settings), **env)
    began = time.monotonic()
    try:
        report, alive = fuzz_then_chat(
            srv, STARTER_ID, per_operation=args.per_operation, derandomize=False
        )
    finally:
        srv.stop()
    print(f"{report.summary()} in {time.monotonic() - began:.0f} s on {os.cpu_count()} cores")
    for line in report.server_errors[:50]:
        print("  5xx:", line)
    print(f"the server chats afterwards: {alive}")


if __name__ == "__main__":
    main()
