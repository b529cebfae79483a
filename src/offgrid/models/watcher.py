"""Hot reload: notice model files that appear, change or go while the server runs.

The registry reads the folders on every listing and hides a file still being copied in,
so a new model shows in ``/v1/models`` as soon as it is whole without any help. What a
watch adds is the other direction: a loaded model whose file is removed or replaced is
unloaded, so no engine goes on serving a file that is gone, and the next load reads (and
checks) the new one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from watchfiles import awatch

__all__ = ["watch_folders"]

log = logging.getLogger(__name__)


async def watch_folders(
    folders: Sequence[Path],
    on_change: Callable[[set[Path]], Awaitable[object]],
    stop: asyncio.Event,
) -> None:
    """Call ``on_change`` with the ``.gguf`` paths that changed, until ``stop`` is set.

    Folders that do not exist when the server starts (an unmounted stick) are not watched.
    """
    existing = [str(f) for f in folders if f.is_dir()]
    if not existing:
        return
    async for changes in awatch(*existing, stop_event=stop, debounce=300, step=50, recursive=False):
        paths = {Path(p) for _, p in changes if p.endswith(".gguf")}
        if paths:
            log.info("model files changed: %s", ", ".join(sorted(p.name for p in paths)))
            await on_change(paths)
