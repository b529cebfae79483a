"""`offgrid tune` (issue 18): a short real search on the starter model writes what it found
for this machine, and the scheduler starts the model with the flags kept for it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import requests

from conftest import REAL_ENV, STARTER_ID, link_models, start_server
from offgrid.engine.build import EngineBinary
from offgrid.engine.tune import load_tuned, machine
from offgrid.models.starter import STARTER


def test_a_short_tune_keeps_its_best_flags_for_this_machine(
    tmp_path: Path, model_store: Path, engine_binary: EngineBinary
) -> None:
    models = link_models(model_store, tmp_path / "models", {STARTER.file_name: STARTER.file_name})
    env = {
        **REAL_ENV,
        "HOME": str(tmp_path / "home"),
        "OFFGRID_MODELS_DIR": str(models),
        "OFFGRID_DATA_DIR": str(tmp_path / "data"),
        "OFFGRID_LLAMA_SERVER": str(engine_binary.path),
    }
    done = subprocess.run(
        [sys.executable, "-m", "offgrid", "tune", STARTER_ID, "--budget", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "llama-server defaults" in done.stdout and "Best:" in done.stdout
    kept = json.loads((tmp_path / "data" / "tuning.json").read_text())[STARTER_ID]
    assert kept["machine"] == machine() and kept["baseline_tokens_per_second"] > 0
    assert kept["trials"][0]["args"] == []  # the baseline: llama-server's own defaults


def test_the_server_starts_a_model_with_its_tuned_flags_from_this_machine_only(
    tmp_path: Path, model_store: Path, engine_binary: EngineBinary
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    tuned = {"args": ["--threads-batch", "1", "--ubatch-size", "256"], "machine": machine()}
    elsewhere = {"args": ["--ubatch-size", "128"], "machine": "another box × 64"}
    (data / "tuning.json").write_text(json.dumps({STARTER_ID: tuned, "gemma": elsewhere}))
    assert load_tuned(data, "gemma") == (), "flags tuned on another machine are not used"
    (tmp_path / "home").mkdir(exist_ok=True)
    models = link_models(model_store, tmp_path / "models", {STARTER.file_name: STARTER.file_name})
    srv = start_server(tmp_path, models, engine_binary, OFFGRID_DATA_DIR=str(data))
    try:
        loaded = requests.post(f"{srv.url}/api/models/{STARTER_ID}/load", json={}, timeout=120)
        assert loaded.status_code == 200, loaded.text
        argv = psutil.Process(srv.engine_pid(STARTER_ID)).cmdline()
        joined = " ".join(argv)
        assert "--threads-batch 1 --ubatch-size 256" in joined, argv
        assert os.path.basename(argv[0]) == "llama-server"
    finally:
        srv.stop()
