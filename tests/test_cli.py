"""The `offgrid` command, run as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest

from conftest import (
    GEMMA_ID,
    STARTER_ID,
    Server,
    fake_engine_settings,
    link_models,
    serve_in_thread,
)
from offgrid.cli.chat import ChatSession
from offgrid.cli.commands import COMMANDS
from offgrid.cli.group import app
from offgrid.engine.build import EngineBinary

OFFGRID = [sys.executable, "-m", "offgrid"]


def run_cli(
    *args: str, env: dict[str, str], stdin: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*OFFGRID, *args], env=env, input=stdin, capture_output=True, text=True, timeout=timeout
    )


def test_help_lists_every_command(server: Server) -> None:
    out = run_cli("--help", env=server.env).stdout
    for command in ("serve", "run", "list", "info", "setup", "config", "search", "download-hf"):
        assert command in out


def test_list_shows_models_with_metadata(server: Server) -> None:
    out = run_cli("list", env={**server.env, "COLUMNS": "200"}).stdout
    assert STARTER_ID in out and GEMMA_ID in out
    assert "Q4_1" in out and "llama" in out and "8192" in out
    assert "Q4_K_M" in out and "gemma3" in out
    starter_row = next(line for line in out.splitlines() if STARTER_ID in line)
    assert "completion" in starter_row  # its capabilities


def test_info_reports_engine_machine_and_models(
    server: Server, engine_binary: EngineBinary
) -> None:
    out = run_cli("info", env={**server.env, "COLUMNS": "300"}).stdout
    assert str(engine_binary.path) in out
    assert "0c1e570" in out or "version" in out.lower()
    assert "RAM" in out and "CPU" in out
    assert "2 models" in out


def test_run_piped_talks_to_running_server(server: Server) -> None:
    proc = run_cli("run", STARTER_ID, env=server.env, stdin="Hello!\nclear\nWhat is 2+2?\nexit\n")
    assert proc.returncode == 0, proc.stderr
    assert "[history cleared]" in proc.stdout
    before, after = proc.stdout.split("[history cleared]")
    assert before.strip() and after.strip()


def test_run_unknown_model_fails_clearly(server: Server) -> None:
    proc = run_cli("run", "nope", env=server.env, stdin="hi\n")
    assert proc.returncode == 1
    assert "nope" in proc.stderr and STARTER_ID in proc.stderr


def test_run_without_server_starts_engine_itself(server: Server, tmp_path: Path) -> None:
    env = {**server.env, "OFFGRID_PORT": "1"}  # nothing listens there
    proc = run_cli("run", STARTER_ID, env=env, stdin="Hello!\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip()


def test_run_under_a_terminal(server: Server) -> None:
    child = pexpect.spawn(
        sys.executable,
        ["-m", "offgrid", "run", STARTER_ID],
        env=server.env,
        timeout=120,
        encoding="utf-8",
        dimensions=(40, 200),
    )
    child.expect("exit' quits")
    child.expect(">>> ")
    child.sendline("Say hi.")
    child.expect(">>> ")
    reply = child.before or ""
    assert reply.replace("Say hi.", "").strip()
    child.sendline("exit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_config_show_tells_where_values_come_from(server: Server, tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("server:\n  port: 12345\ninference:\n  num_threads: 3\n")
    env = {k: v for k, v in server.env.items() if k not in ("OFFGRID_PORT", "OFFGRID_NUM_THREADS")}
    out = run_cli(
        "config",
        "show",
        env={**env, "OFFGRID_CONFIG": str(cfg), "OFFGRID_PARALLEL": "2", "COLUMNS": "250"},
    ).stdout
    assert "12345" in out and str(cfg) in out
    line = next(ln for ln in out.splitlines() if "OFFGRID_PARALLEL" in ln)
    assert "env" in line


def test_config_validate_rejects_bad_values(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("server:\n  port: lots\n")
    proc = run_cli("config", "validate", str(cfg), env=dict(os.environ))
    assert proc.returncode == 1 and "port" in proc.stderr


def test_benchmark_json_reports_every_level(server: Server) -> None:
    proc = run_cli(
        "benchmark",
        STARTER_ID,
        "--concurrency",
        "1,2",
        "--max-tokens",
        "8",
        "--rounds",
        "1",
        "--json",
        env=server.env,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert [lvl["concurrency"] for lvl in report["levels"]] == [1, 2]
    for lvl in report["levels"]:
        assert lvl["ttft_ms_median"] > 0 and lvl["aggregate_tokens_per_s"] > 0
        assert lvl["prompt_tokens_per_s"] > 0 and lvl["generation_tokens_per_s"] > 0


def test_ps_load_and_stop(server: Server) -> None:
    assert "loaded" in run_cli("load", GEMMA_ID, env=server.env).stdout
    out = run_cli("ps", env={**server.env, "COLUMNS": "200"}).stdout
    assert GEMMA_ID in out
    assert "unloaded" in run_cli("stop", GEMMA_ID, env=server.env).stdout
    proc = run_cli("ps", env=server.env)
    assert GEMMA_ID not in proc.stdout


# -- start-up: each command imports its own module only ---------------------------------
def test_each_command_loads_under_its_help_line() -> None:
    for name, (_target, line) in COMMANDS.items():
        command = app.commands[name].real  # type: ignore[attr-defined]
        assert command.name == name
        assert command.help.startswith(line) and command.help.count(line) == 1, name


def modules_after(*args: str, tmp_path: Path) -> set[str]:
    """The modules imported by the time ``offgrid ARGS`` exits."""
    out = tmp_path / "modules.txt"
    code = (
        "import atexit, sys\n"
        f"atexit.register(lambda: open({str(out)!r}, 'w').write(' '.join(sys.modules)))\n"
        f"sys.argv = ['offgrid', *{list(args)!r}]\n"
        "from offgrid.cli import main\n"
        "main()\n"
    )
    env = {**os.environ, "OFFGRID_MODELS_DIR": str(tmp_path / "models")}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return set(out.read_text().split())


def test_help_and_list_import_only_what_they_use(tmp_path: Path) -> None:
    """`offgrid --help` imports no command module, `offgrid list` only its own, and
    neither imports an HTTP, server or validation library: each costs the start tens of ms."""
    heavy = {"httpx2", "aiohttp", "uvicorn", "fastapi", "pydantic", "huggingface_hub", "psutil"}
    shown = modules_after("--help", tmp_path=tmp_path)
    assert {m for m in shown if m.startswith("offgrid.cli.")} == {"offgrid.cli.commands"}
    listed = modules_after("list", tmp_path=tmp_path)
    commands = {m for m in listed if m.startswith("offgrid.cli.")}
    assert commands == {"offgrid.cli.commands", "offgrid.cli.listing", "offgrid.cli.common"}
    assert not heavy & (shown | listed)
    assert "typer" not in shown | listed  # both run without the CLI framework


# -- the client, against a server whose engine is the fake one ---------------------------
@pytest.fixture
def fake_served(tmp_path: Path, model_store: Path) -> Iterator[dict[str, str]]:
    """A server in this process over the fake engine; the env that points the CLI at it."""
    models = link_models(model_store, tmp_path / "m", {f"{STARTER_ID}.gguf": f"{STARTER_ID}.gguf"})
    with serve_in_thread(fake_engine_settings(tmp_path, models)) as url:
        port = url.rsplit(":", 1)[1]
        yield {**os.environ, "OFFGRID_PORT": port, "OFFGRID_MODELS_DIR": str(tmp_path / "none")}


def test_client_commands_reach_the_running_server(fake_served: dict[str, str]) -> None:
    proc = run_cli("run", STARTER_ID, env=fake_served, stdin="Hello!\nclear\nAgain?\nexit\n")
    assert proc.returncode == 0, proc.stderr
    before, after = proc.stdout.split("[history cleared]")
    assert before.strip() and after.strip()
    proc = run_cli("run", "nope", env=fake_served, stdin="hi\n")
    assert proc.returncode == 1 and "nope" in proc.stderr and STARTER_ID in proc.stderr
    assert "loaded" in run_cli("load", STARTER_ID, env=fake_served).stdout
    assert STARTER_ID in run_cli("ps", env={**fake_served, "COLUMNS": "200"}).stdout
    assert "unloaded" in run_cli("stop", STARTER_ID, env=fake_served).stdout
    proc = run_cli("load", "nope", env=fake_served)
    assert proc.returncode == 1 and "nope" in proc.stderr


def test_remove_without_a_server_removes_locally(tmp_path: Path) -> None:
    env = {**os.environ, "OFFGRID_PORT": "1", "OFFGRID_MODELS_DIR": str(tmp_path / "models")}
    proc = run_cli("remove", "nope", env=env)  # no server answers: the registry is asked
    assert proc.returncode == 1 and "nope" in proc.stderr and "No OffGrid server" not in proc.stderr


def test_keys_are_made_listed_and_revoked_and_the_cli_sends_one(
    tmp_path: Path, model_store: Path
) -> None:
    """Issue 15: `offgrid keys` manages the API keys; the CLI sends OFFGRID_API_KEY, and
    says how to get one when the server refuses it."""
    data = tmp_path / "data"
    env = {**os.environ, "OFFGRID_DATA_DIR": str(data)}
    made = run_cli("keys", "create", "--name", "ops", "--expires", "30d", env=env)
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert key.startswith("og-") and "shown only now" in made.stderr
    listed = run_cli("keys", "list", env=env).stdout
    assert "ops" in listed and "admin" in listed and key not in listed
    models = link_models(model_store, tmp_path / "m", {f"{STARTER_ID}.gguf": f"{STARTER_ID}.gguf"})
    settings = fake_engine_settings(tmp_path, models, OFFGRID_DATA_DIR=str(data))
    with serve_in_thread(settings) as url:
        env["OFFGRID_PORT"] = url.rsplit(":", 1)[1]
        refused = run_cli("ps", env=env)
        assert refused.returncode == 1 and "OFFGRID_API_KEY" in refused.stderr
        assert run_cli("ps", env={**env, "OFFGRID_API_KEY": key}).returncode == 0
        run_cli("keys", "create", "--name", "spare", env=env)  # no key at all: open again
        assert "Revoked" in run_cli("keys", "revoke", "ops", env=env).stdout
        assert run_cli("ps", env={**env, "OFFGRID_API_KEY": key}).returncode == 1
    assert "signing" in run_cli("signing-key", "--help", env=env).stdout


def test_run_shows_thinking_apart_and_keeps_only_the_answer(
    tmp_path: Path, model_store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 16: a reasoning model's thinking comes first under "Thinking…", dim on a
    terminal and plain in a pipe, and never joins the history the next turn sends."""
    monkeypatch.setenv("FAKE_ENGINE_REASONING", "3")  # the fake engine reasons first
    models = link_models(model_store, tmp_path / "m", {f"{STARTER_ID}.gguf": f"{STARTER_ID}.gguf"})
    with serve_in_thread(fake_engine_settings(tmp_path, models)) as url:
        env = {**os.environ, "OFFGRID_PORT": url.rsplit(":", 1)[1]}
        piped = run_cli("run", STARTER_ID, env=env, stdin="Hi\n")
        assert piped.returncode == 0, piped.stderr
        assert piped.stdout.startswith("Thinking…\nthink0 think1 think2 \n\ntok0 ")
        assert "\x1b" not in piped.stdout

        session = ChatSession(url, STARTER_ID)
        written: list[str] = []
        reply = session.send("Hi", written.append, styled=True)
        assert "".join(written) == f"\x1b[2mThinking…\nthink0 think1 think2 \x1b[0m\n\n{reply}"
        assert reply.startswith("tok0 ") and "think" not in reply
        assert session.history == [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": reply},
        ]

        child = pexpect.spawn(
            sys.executable,
            ["-m", "offgrid", "run", STARTER_ID],
            env=env,
            timeout=60,
            encoding="utf-8",
        )
        child.expect(">>> ")
        child.sendline("Hi")
        child.expect("\x1b\\[2mThinking…\r\nthink0 think1 think2 \x1b\\[0m\r\n\r\ntok0 ")
        child.expect(">>> ")
        child.sendline("exit")
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 0
