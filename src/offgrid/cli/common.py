"""What the commands share: settings from env, config file and flags; sizes for humans."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from offgrid.config import Settings, load_settings
from offgrid.units import human_size

if TYPE_CHECKING:  # rich's progress bars are imported by the commands that draw them
    from rich.console import Console
    from rich.progress import Progress as RichProgress
    from rich.progress import TaskID

__all__ = ["file_progress", "human_size", "print_columns", "print_status", "settings_from"]


def settings_from(**flags: str | int | Path | None) -> Settings:
    """Settings from defaults < config file < env < the flags given on the command line."""
    return load_settings().with_overrides(**flags)


def print_columns(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Columns aligned with spaces (as ``ollama list`` prints them): a thousand rows take
    milliseconds, where a rich table took over a second."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    for line in (headers, *rows):
        print("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())


def print_status(console: Console, color: str, status: str, text: str) -> None:
    """One line of a report (``imported``, ``CHANGED``…): the status in its colour, then
    the rest, kept on one line whatever the terminal's width."""
    console.print(f"[{color}]{status:8}[/] {text}", highlight=False, soft_wrap=True)


class _Bar:
    """A ``atomic_files.Progress`` drawn as a rich bar per file, with speed and time left."""

    def __init__(self, bars: RichProgress) -> None:
        self.bars = bars
        self.task: TaskID | None = None

    def start(self, name: str, total: int, done: int = 0) -> None:
        if self.task is not None:
            self.bars.update(self.task, visible=False)
        self.task = self.bars.add_task(name, total=total, completed=done)

    def advance(self, done: int) -> None:
        if self.task is not None:
            self.bars.advance(self.task, done)

    def note(self, message: str) -> None:
        """A line above the bars (a retry, a resume)."""
        self.bars.console.print(message, highlight=False)


@contextmanager
def file_progress() -> Iterator[_Bar]:
    """Progress bars for long file work (on stderr, so output stays clean)."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )
    from rich.progress import Progress as RichProgress

    with RichProgress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        transient=True,
        console=Console(stderr=True),
    ) as bars:
        yield _Bar(bars)
