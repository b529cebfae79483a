"""The pack's wheelhouse: every wheel the project needs on each target python, taken from
the real package index and from nothing else on this machine.

pip here may be configured (config files, ``PIP_*`` variables) with local sources:
find-links folders, ``file://`` indexes, a constraints file. A pack built through them
would carry what this machine happens to hold rather than what the index serves, so pip
runs with no config file (``PIP_CONFIG_FILE=/dev/null``) and no ``PIP_*`` variable except
those that say how to reach the network (certificate, proxy, timeouts, an http(s) index),
which are carried over from the environment and from pip's configuration.

Downloads are kept in a per-user cache (``<cache>/wheels``). A python's set is first
resolved from that cache alone, with ``--no-index``; only when the cache cannot satisfy it
(or on ``refresh``) is the index asked, and pip then downloads only what the cache lacks.
The files that go into the pack are always those of an offline resolution, so a
wheelhouse is known to install with ``--no-index``.

pip evaluates environment markers (``python_version < "3.12"``) with the interpreter that
runs it, whatever ``--python-version`` says, so each target is resolved by an interpreter
of that version where this machine has one (PATH, /usr/bin, pyenv), and otherwise by this
one, which the pack then reports.
"""

from __future__ import annotations

import glob
import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from offgrid.errors import SetupError

__all__ = [
    "PLATFORMS",
    "Resolution",
    "build_wheel",
    "find_python",
    "pip_environment",
    "requirements",
    "resolve",
    "wheel_glibc",
]

Say = Callable[[str], None]
Env = Mapping[str, str]

# Wheels every x86-64 Linux with glibc >= 2.17 runs, then those for >= 2.28 where a
# project ships nothing older; earlier platforms are preferred (pip ranks them in order).
PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_28_x86_64")
# How pip reaches the network: kept. Everything else (sources, constraints) is dropped.
_NETWORK_SETTINGS = (
    "cert",
    "client-cert",
    "proxy",
    "trusted-host",
    "timeout",
    "default-timeout",
    "retries",
    "index-url",
)
_PIP_TIMEOUT = 1800  # seconds for one pip run: a slow link and 150 MB of wheels


def pip_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment pip runs in: ``environ`` without config files or ``PIP_*`` sources.

    Network settings (certificate, proxy, timeouts, an http(s) index) are kept, from
    ``PIP_*`` variables or, where those do not set them, from pip's config files.
    """
    env = {k: v for k, v in environ.items() if not k.startswith("PIP_")}
    wanted = {"PIP_" + s.upper().replace("-", "_"): s for s in _NETWORK_SETTINGS}
    done = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"],
        capture_output=True,
        text=True,
        env=dict(environ),
        timeout=60,
        check=False,
    )
    for line in done.stdout.splitlines():  # section.key='value'
        key, _, value = line.partition("=")
        var = "PIP_" + key.rpartition(".")[2].upper().replace("-", "_")
        if var in wanted:
            env[var] = value.strip().strip("'\"")
    env.update({k: v for k, v in environ.items() if k in wanted})
    index = env.get("PIP_INDEX_URL", "")
    if index and not index.startswith(("https://", "http://")):
        del env["PIP_INDEX_URL"]  # a file:// index is a local source
    env |= {
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PIP_NO_INPUT": "1",
    }
    return env


def requirements(source: Path) -> tuple[list[str], list[str]]:
    """The project's dependencies and its build requirements, from its pyproject.toml."""
    project = tomllib.loads((source / "pyproject.toml").read_text(encoding="utf-8"))
    return list(project["project"]["dependencies"]), list(project["build-system"]["requires"])


def find_python(version: str) -> str | None:
    """An interpreter of ``version`` (e.g. ``"3.12"``) with a pip that writes reports."""
    if f"{sys.version_info[0]}.{sys.version_info[1]}" == version:
        return sys.executable
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    candidates = [
        f"/usr/bin/python{version}",
        f"/usr/local/bin/python{version}",
        *sorted(glob.glob(f"{pyenv}/{version}.*/bin/python{version}"), reverse=True),
        f"python{version}",  # last: a pyenv shim on the PATH may name a version not active
    ]
    probe = "import sys, pip; print('%d.%d' % sys.version_info[:2], pip.__version__)"
    for python in candidates:
        try:
            done = subprocess.run(
                [python, "-c", probe], capture_output=True, text=True, timeout=30, check=False
            )
        except OSError:
            continue
        found, _, pip_version = done.stdout.strip().partition(" ")
        if done.returncode == 0 and found == version and _at_least(pip_version, (22, 2)):
            return python  # pip 22.2 brought --report
    return None


@dataclass(frozen=True)
class Resolution:
    """The wheels one target python needs, and how they were found."""

    version: str
    files: tuple[Path, ...]
    resolved_with: str  # the interpreter whose markers chose them
    exact: bool  # resolved by an interpreter of the target's own version
    downloaded: int  # files the index sent this time (0: the cache had everything)


def build_wheel(source: Path, out: Path, cache: Path, env: Env, say: Say) -> Path:
    """The project's own wheel, built from ``source`` into ``out``.

    The build backend comes from the wheel cache when it is there, else from the index.
    """
    out.mkdir(parents=True, exist_ok=True)
    base = ["wheel", "--no-deps", "--progress-bar", "off", "--wheel-dir", str(out)]
    base += [f"--find-links={cache}", str(source)]
    code, log = _pip(sys.executable, [*base, "--no-index"], env, say)
    if code != 0:
        code, log = _pip(sys.executable, base, env, say)
    wheels = sorted(out.glob("offgrid-*.whl"))
    if code != 0 or not wheels:
        raise SetupError(f"Building the project's wheel from {source} failed:\n{_tail(log)}")
    return wheels[-1]


def resolve(
    version: str,
    wheel: Path,
    *,
    dependencies: list[str],
    build: list[str],
    cache: Path,
    env: Env,
    refresh: bool,
    step: Say,
    activity: Say,
) -> Resolution:
    """The wheels ``wheel`` and the build requirements need on CPython ``version``.

    Resolved from the cache with no index; when that fails (or ``refresh``), the index is
    asked to fill the cache first.
    """
    python = find_python(version)
    runner = python or sys.executable
    target = _target(version)
    files, why = None, "--refresh"
    if not refresh:
        files, why = _offline(runner, wheel, build, target, cache, env)
    downloaded = 0
    if files is None:
        step(f"   python {version}: asking the package index ({why.splitlines()[-1][:90]})")
        cache.mkdir(parents=True, exist_ok=True)
        before = set(cache.iterdir())
        args = ["download", "--progress-bar", "off", "--dest", str(cache), *target]
        code, log = _pip(runner, [*args, *dependencies, *build], env, activity)
        if code != 0:
            raise SetupError(
                f"pip could not download the wheels for python {version}:\n{_tail(log)}"
            )
        downloaded = len(set(cache.iterdir()) - before)
        files, why = _offline(runner, wheel, build, target, cache, env)
        if files is None:
            raise SetupError(f"The wheels for python {version} do not resolve:\n{_tail(why)}")
    return Resolution(version, files, runner, python is not None, downloaded)


def wheel_glibc(name: str) -> tuple[int, int]:
    """The oldest glibc a wheel runs on, from its platform tags ((0, 0): any)."""
    legacy = {"1": (2, 5), "2010": (2, 12), "2014": (2, 17)}
    floors = [
        (int(m[0]), int(m[1])) if m[0] else legacy[m[2]]
        for m in re.findall(r"manylinux(?:_(\d+)_(\d+)|(1|2010|2014))_x86_64", name)
    ]
    return min(floors, default=(0, 0))


def _target(version: str) -> list[str]:
    abi = "cp" + version.replace(".", "")
    args = ["--only-binary=:all:", "--python-version", version, "--implementation", "cp"]
    return [*args, "--abi", abi, *(f"--platform={p}" for p in PLATFORMS)]


def _offline(
    python: str, wheel: Path, build: list[str], target: list[str], cache: Path, env: Env
) -> tuple[tuple[Path, ...] | None, str]:
    """The files a resolution from the cache alone picks, or None and pip's error."""
    with tempfile.TemporaryDirectory(prefix="offgrid-pack-") as tmp:
        report = Path(tmp) / "report.json"
        args = ["install", "--dry-run", "--ignore-installed", "--quiet", "--no-index"]
        args += ["--target", str(Path(tmp) / "target"), "--report", str(report)]
        args += [f"--find-links={cache}", *target, str(wheel), *build]
        code, log = _pip(python, args, env, lambda _line: None)
        if code != 0:
            return None, log or f"pip exited {code}"
        items = json.loads(report.read_text())["install"]
    files = tuple(Path(unquote(urlparse(i["download_info"]["url"]).path)) for i in items)
    return files, ""


def _pip(python: str, args: list[str], env: Env, say: Say) -> tuple[int, str]:
    """Run pip, passing each line it prints to ``say``; its exit status and output."""
    proc = subprocess.Popen(
        [python, "-m", "pip", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(env),
    )
    assert proc.stdout is not None
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line.rstrip())
            say(lines[-1])
        code = proc.wait(_PIP_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return code, "\n".join(lines)


def _tail(log: str, lines: int = 15) -> str:
    return "\n".join(log.splitlines()[-lines:])


def _at_least(version: str, floor: tuple[int, int]) -> bool:
    parts = re.match(r"(\d+)\.(\d+)", version)
    return parts is not None and (int(parts[1]), int(parts[2])) >= floor
