"""/metrics in Prometheus format and /api/stats: counters move by the right amounts."""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from conftest import STARTER_ID, Server
from offgrid.api.metrics import Metrics

CHAT = "/v1/chat/completions"


def scrape(server: Server) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = requests.get(f"{server.url}/metrics", timeout=10).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_count_requests_tokens_and_engines(server: Server) -> None:
    client = server.client()
    client.chat.completions.create(  # loads the model before the first scrape
        model=STARTER_ID, messages=[{"role": "user", "content": "Hi"}], max_tokens=2
    )
    before = scrape(server)
    prompt = completion = 0
    for i in range(3):
        reply = client.chat.completions.create(
            model=STARTER_ID,
            messages=[{"role": "user", "content": f"Count to {i}"}],
            max_tokens=5,
        )
        assert reply.usage is not None
        prompt += reply.usage.prompt_tokens
        completion += reply.usage.completion_tokens
    for _ in range(2):
        stream = client.chat.completions.create(
            model=STARTER_ID,
            messages=[{"role": "user", "content": "Say hi"}],
            max_tokens=6,
            stream=True,
            stream_options={"include_usage": True},
        )
        usage = [c.usage for c in stream if c.usage is not None][-1]
        prompt += usage.prompt_tokens
        completion += usage.completion_tokens
    missing = requests.post(
        f"{server.url}{CHAT}", json={"model": "no-such-model", "messages": []}, timeout=10
    )
    assert missing.status_code == 404
    requests.get(f"{server.url}/api/models/no-such-model", timeout=10)
    after = scrape(server)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    counted = {k: after[k] - before.get(k, 0) for k in after if k[0] == "offgrid_requests_total"}
    assert moved("offgrid_requests_total", route=CHAT, status="200") == 5, counted
    assert moved("offgrid_requests_total", route=CHAT, status="404") == 1
    assert moved("offgrid_requests_total", route="/api/models/{model_id}", status="404") == 1
    assert moved("offgrid_request_duration_seconds_count", route=CHAT) == 6
    assert moved("offgrid_prompt_tokens_total", model=STARTER_ID) == prompt
    assert moved("offgrid_completion_tokens_total", model=STARTER_ID) == completion
    assert moved("offgrid_time_to_first_token_seconds_count", model=STARTER_ID) == 2
    assert moved("offgrid_queue_wait_seconds_count", model=STARTER_ID) == 5  # one per lease
    assert value(after, "offgrid_tokens_per_second", model=STARTER_ID) > 0
    assert value(after, "offgrid_loaded_models") >= 1
    assert value(after, "offgrid_model_memory_bytes", model=STARTER_ID, kind="ram") > 1e8
    assert value(after, "offgrid_slots", model=STARTER_ID) >= 1
    assert value(after, "offgrid_queue_length", model=STARTER_ID) == 0
    assert value(after, "offgrid_engine_starts_total", model=STARTER_ID) >= 1

    stats = requests.get(f"{server.url}/api/stats", timeout=10).json()
    m = stats["metrics"]
    assert m["completion_tokens"][STARTER_ID]["total"] == value(
        after, "offgrid_completion_tokens_total", model=STARTER_ID
    )
    assert any(e["id"] == STARTER_ID and e["parallel"] >= 1 for e in stats["engines"])
    system = stats["system"]
    assert system["ram_total"] > system["ram_available"] > 0
    assert system["disk_total"] > system["disk_free"] > 0 and system["cpu_cores"] >= 1


def test_history_is_sampled_by_a_timer_into_a_ring_of_the_last_hour() -> None:
    """Issue 16: the dashboard's charts read points the server took on its own (so a reload
    keeps them), with the dashboard's own polls left out of the requests."""

    async def until(ready: Any) -> None:
        deadline = time.monotonic() + 10
        while not ready():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.005)

    async def sample() -> None:
        metrics = Metrics(cast(Any, None), sample_seconds=0.02, history_seconds=0.06)
        metrics.start()
        start = metrics.points[0]
        assert start["requests_per_minute"] == start["tokens_per_second"] == 0
        metrics.request(CHAT, 200, 0.1)
        metrics.request("/api/stats", 200, 0.01)
        metrics.completion(STARTER_ID, {"completion": 50}, None)
        await until(lambda: len(metrics.points) == 2)
        second = metrics.points[1]
        seconds = second["time"] - start["time"]
        assert second["requests_per_minute"] * seconds / 60 == pytest.approx(1)
        assert second["tokens_per_second"] * seconds == pytest.approx(50)
        assert second["ram_used_bytes"] > 0
        await until(lambda: metrics.points[0] is not start)  # the ring has turned
        assert len(metrics.points) == 3
        metrics.close()
        kept = list(metrics.points)
        await asyncio.sleep(0.1)  # five intervals: none adds a point once closed
        assert list(metrics.points) == kept

    asyncio.run(sample())


def test_stats_carry_the_history_with_a_point_for_now(server: Server) -> None:
    history = requests.get(f"{server.url}/api/stats", timeout=10).json()["history"]
    assert history["sample_seconds"] == 30
    points = history["points"]
    assert points and points[-1]["time"] == pytest.approx(time.time(), abs=30)
    assert set(points[-1]) == {
        "time",
        "tokens_per_second",
        "requests_per_minute",
        "ram_used_bytes",
    }
