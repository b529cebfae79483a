"""Kill points for the crash tests (issue 18): SIGKILL this process at the n-th call of one
of the calls that change files, before or after it runs (``sitecustomize`` imports this
module when asked).

``$OFFGRID_TEST_KILL_AT`` is ``op:n:before`` or ``op:n:after``, op one of ``OPS``.
``$OFFGRID_TEST_KILL_COUNT`` names a file where the number of calls of each op so far is
written as JSON after each call (a server stopped by a signal runs no exit handler): a
run with it tells a test which kill points exist (tests/test_crashes.py).
Nothing else changes: the calls are made as they would be.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Callable
from typing import Any

OPS = ("write", "fsync", "fdatasync", "replace", "rename", "link", "unlink")

_counts = dict.fromkeys(OPS, 0)
_lock = threading.Lock()
# Taken out of the environment: the process the test started is the one to kill and
# count, not the programs it runs in turn (pip under `offgrid pack`, say)
_op, _n, _when = (os.environ.pop("OFFGRID_TEST_KILL_AT", "") + "::").split(":")[:3]
_kill = os.kill
_pid = os.getpid()


def _die() -> None:
    _kill(_pid, signal.SIGKILL)


def _hooked(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        with _lock:
            _counts[name] += 1
            hit = name == _op and _counts[name] == int(_n or 0)
        if hit and _when == "before":
            _die()
        result = real(*args, **kwargs)
        if hit and _when == "after":
            _die()
        if _path:
            with _lock, open(_path, "w", encoding="utf-8") as out:  # no hooked call in here
                out.write(json.dumps(_counts))
        return result

    return call


_path = os.environ.pop("OFFGRID_TEST_KILL_COUNT", "")
for _name in OPS:
    setattr(os, _name, _hooked(_name, getattr(os, _name)))
if _path:
    with open(_path, "w", encoding="utf-8") as _out:
        _out.write(json.dumps(_counts))
