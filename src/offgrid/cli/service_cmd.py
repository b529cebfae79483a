"""``offgrid doctor`` and ``offgrid logs``: the service, checked and read."""

from __future__ import annotations

import shutil
import subprocess
from typing import Annotated

import typer

from offgrid.cli.common import settings_from

UNIT = "offgrid-llm.service"


def doctor() -> None:
    """Each line ok, or the problem and its fix; exits 1 when anything is wrong."""
    from offgrid.service.doctor import run_checks

    checks = run_checks(settings_from())
    width = max(len(c.name) for c in checks)
    for c in checks:
        print(f"{'ok     ' if c.ok else 'PROBLEM'} {c.name:<{width}}  {c.detail}")
        if not c.ok and c.fix:
            print(f"        {'':<{width}}  fix: {c.fix}")
    if not all(c.ok for c in checks):
        raise typer.Exit(1)


def logs(
    follow: Annotated[bool, typer.Option("-f", "--follow", help="Keep printing new lines")] = False,
    lines: Annotated[int, typer.Option("-n", "--lines", help="How many past lines")] = 100,
) -> None:
    """The service's log, from the journal (journalctl -u offgrid-llm)."""
    from offgrid.errors import OffGridError

    journalctl = shutil.which("journalctl")
    if journalctl is None:
        raise OffGridError(
            "journalctl is not here, so there is no service journal: a server started with "
            "`offgrid serve` logs to its terminal."
        )
    argv = [journalctl, "-u", UNIT, "-n", str(lines), "--no-pager", "-o", "short-iso"]
    raise typer.Exit(subprocess.call([*argv, "-f"] if follow else argv))
