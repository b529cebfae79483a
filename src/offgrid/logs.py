"""Logs for operators: one line per request, plain for journald or JSON for collectors.

``configure(settings)`` sets the root logger once: ``OFFGRID_LOG_FORMAT=json`` writes one
JSON object per line (time, level, logger, message and the request's fields); otherwise a
plain line, without a timestamp when journald is the reader (it stamps lines itself:
``JOURNAL_STREAM`` is set). ``request_line`` is what the server logs at info for each
request: method, route, model, status, tokens, milliseconds — never the prompt.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Mapping
from typing import Any

from offgrid.config import Settings

__all__ = ["access", "configure", "request_line"]

access = logging.getLogger("offgrid.access")
_FIELDS = ("method", "route", "model", "status", "prompt_tokens", "completion_tokens", "ms")


class _Json(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        out.update((k, v) for k in _FIELDS if (v := getattr(record, k, None)) is not None)
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def configure(settings: Settings, environ: Mapping[str, str] = os.environ) -> None:
    """Log to stderr at ``settings.log_level``, in ``settings.log_format``."""
    handler = logging.StreamHandler(sys.stderr)
    if settings.log_format == "json":
        handler.setFormatter(_Json())
    else:
        stamp = "" if environ.get("JOURNAL_STREAM") else "%(asctime)s "
        handler.setFormatter(logging.Formatter(stamp + "%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=settings.log_level.upper(), handlers=[handler], force=True)


def request_line(
    method: str,
    route: str,
    status: int,
    seconds: float,
    *,
    model: str | None = None,
    tokens: Mapping[str, float] | None = None,
) -> None:
    """Log one finished request at info (the fields also go to JSON logs as keys)."""
    if not access.isEnabledFor(logging.INFO):
        return
    fields: dict[str, Any] = {"method": method, "route": route, "status": status}
    fields["ms"] = round(seconds * 1000, 1)
    if model is not None:
        fields["model"] = model
    if tokens:
        fields["prompt_tokens"] = int(tokens.get("prompt", 0))
        fields["completion_tokens"] = int(tokens.get("completion", 0))
    text = " ".join(f"{k}={fields[k]}" for k in _FIELDS if k in fields)
    access.info(text, extra=fields)
