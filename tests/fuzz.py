"""Fuzz a running server from its own OpenAPI schema (schemathesis + hypothesis), for
`tests/test_fuzz.py` (about 1,000 requests) and `bench/fuzz.py` (10,000).

Every operation of ``/openapi.json`` (the proxied routes with their real bodies:
``api/proxied_schema.py``) gets bodies, paths and queries that fit the schema (positive)
and that break it (negative: wrong types, missing fields, odd unicode, huge numbers). The
``model`` fields are pointed at the installed models, so that positive bodies reach the
engine. A 5xx is a failure unless it is one the server means: the Hub unreachable (503
``unreachable``) or an engine still loading (503 with Retry-After).
"""

from __future__ import annotations

import collections
import contextlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

__all__ = ["SERVER_ENV", "SKIP", "FuzzReport", "fuzz", "fuzz_then_chat"]

# The fuzzed server: short generations whatever max_tokens says, a Hub that cannot be
# reached (503, as meant)
SERVER_ENV = {"OFFGRID_MAX_CONTEXT": "128", "HF_ENDPOINT": "http://127.0.0.1:9"}

# What a fuzzer must not do to the shared machine: remove the model it fuzzes with
SKIP = ("DELETE /api/models/{model_id}", "DELETE /api/delete")


@dataclass
class FuzzReport:
    requests: int = 0
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    server_errors: list[str] = field(default_factory=list)

    def summary(self) -> str:
        common = ", ".join(f"{s}: {n}" for s, n in sorted(self.statuses.items()))
        return f"{self.requests} requests ({common}); unintended 5xx: {len(self.server_errors)}"


def _intended(resp: requests.Response) -> bool:
    """A 5xx the server means: the Hub cannot be reached, or an engine is still loading."""
    try:
        error = resp.json().get("error")
    except (ValueError, AttributeError):
        return False
    code = error.get("code") if isinstance(error, dict) else None
    return resp.status_code == 503 and (code == "unreachable" or "Retry-After" in resp.headers)


def _with_models(schema: dict[str, Any], models: list[str]) -> dict[str, Any]:
    """``schema`` with every body's ``model`` field drawn from ``models`` (and one unknown)."""
    for component in schema.get("components", {}).get("schemas", {}).values():
        prop = component.get("properties", {}).get("model")
        if prop is not None and prop.get("type") == "string":
            prop["enum"] = [*models, "no-such-model"]
    return schema


def fuzz(
    url: str,
    *,
    per_operation: int,
    models: list[str],
    skip: Iterable[str] = (),
    derandomize: bool = True,
) -> FuzzReport:
    """Fuzz every operation of the server at ``url`` with ``per_operation`` examples in each
    generation mode (operations whose label is in ``skip`` left out). ``derandomize``: the
    same examples every run (CI must not flake); off, new ones each time (the bench)."""
    raw = requests.get(f"{url}/openapi.json", timeout=30).json()
    schema = schemathesis.openapi.from_dict(_with_models(raw, models))
    report = FuzzReport()
    session = requests.Session()
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.label in set(skip):
            continue
        breakable = bool(list(operation.iter_parameters())) or bool(operation.body)
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)[: 2 if breakable else 1]:
            _fuzz_one(operation, mode, url, session, report, per_operation, derandomize)
    return report


def _fuzz_one(
    operation: Any,
    mode: GenerationMode,
    url: str,
    session: requests.Session,
    report: FuzzReport,
    examples: int,
    derandomize: bool,
) -> None:
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=derandomize,
        suppress_health_check=list(HealthCheck),
    )
    @given(operation.as_strategy(mode))
    def one(case: Any) -> None:
        resp = case.call(base_url=url, session=session, timeout=120)
        report.requests += 1
        report.statuses[resp.status_code] += 1
        if resp.status_code >= 500 and not _intended(resp):
            body = (
                case.body
                if isinstance(case.body, str | bytes)
                else json.dumps(case.body, default=str)
            )
            report.server_errors.append(
                f"{operation.label} {mode.value} {case.path_parameters or ''} "
                f"{case.query or ''} {str(body)[:300]} → {resp.status_code} {resp.text[:300]}"
            )

    with contextlib.suppress(Unsatisfiable):  # a schema that no example can break
        one()


def fuzz_then_chat(server: Any, model: str, **options: Any) -> tuple[FuzzReport, bool]:
    """``fuzz`` a test server (``conftest.Server``), then whether it still chats."""
    report = fuzz(server.url, models=[model], skip=SKIP, **options)
    chat = server.client().chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=4
    )
    return report, chat.choices[0].message.content is not None
