"""The dashboard at /ui, driven by a real browser (Debian's Chromium, headless, through
Playwright) against the real server, engine and models.

Screenshots of each page in light and dark are written to build/screenshots/ (ignored by
git: running the tests changes no tracked file). To refresh the ones the README shows:
    OFFGRID_SCREENSHOTS=docs/screenshots .venv/bin/python -m pytest tests/test_ui.py -k screenshots
"""

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests
from playwright.sync_api import Browser, Page, Route, sync_playwright

from conftest import (
    FAKE_ENGINE,
    GEMMA_ID,
    SLOWDOWN,
    STARTER_ID,
    Server,
    link_models,
    start_server,
    wait_for,
)
from fake_hub import FakeHub
from lan import start_loopback_node
from offgrid.auth.keys import KeyStore
from offgrid.engine.build import EngineBinary
from offgrid.engine.process import free_port
from offgrid.models.starter import GEMMA, STARTER

CHROMIUM = os.environ.get("OFFGRID_CHROMIUM", "/usr/bin/chromium")
ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / os.environ.get("OFFGRID_SCREENSHOTS", "build/screenshots")
PHONE = {"width": 390, "height": 844}
SMOL = STARTER.file_name


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: apt-get install chromium"
    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        yield b
        b.close()


@contextmanager
def watched_page(browser: Browser, width: int = 1200) -> Iterator[Page]:
    """A page in a context of its own that fails the test on any script or console error."""
    context = browser.new_context(viewport={"width": width, "height": 800})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    pg.set_default_timeout(60_000 * SLOWDOWN)
    try:
        yield pg
    finally:
        context.close()
    assert errors == []


@pytest.fixture
def page(browser: Browser, server: Server) -> Iterator[Page]:
    with watched_page(browser) as pg:
        yield pg


@contextmanager
def own_page(browser: Browser, srv: Server) -> Iterator[Page]:
    """A page in a browser context of its own on ``srv``; the context closed and the server
    stopped when the block ends."""
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(60_000 * SLOWDOWN)
    try:
        yield page
    finally:
        context.close()
        srv.stop()


def open_ui(page: Page, server: Server, where: str = "chat") -> None:
    page.goto(f"{server.url}/ui#{where}")
    if where == "chat":
        page.wait_for_selector(f"#model option[value='{STARTER_ID}']", state="attached")


def send(page: Page, text: str, max_tokens: int | None = None) -> None:
    if max_tokens is not None:
        if not page.is_visible("#max-tokens"):
            page.click("#settings-toggle")
        page.fill("#max-tokens", str(max_tokens))
        page.dispatch_event("#max-tokens", "change")
    page.fill("#prompt", text)
    page.press("#prompt", "Enter")


def last_reply(page: Page) -> Any:
    return page.locator(".message.assistant").last


def wait_done(page: Page) -> None:
    page.wait_for_selector(".message.assistant.streaming", state="detached")


def engine_idle(server: Server, model: str) -> bool:
    slots = server.engine(model, "/slots").json()
    return not any(s.get("is_processing") for s in slots)


def test_page_loads_with_every_request_to_offgrid(page: Page, server: Server) -> None:
    urls: list[str] = []
    page.on("request", lambda r: urls.append(r.url))
    open_ui(page, server)
    send(page, "Hi", max_tokens=8)
    wait_done(page)
    for where, ready in (("models", "#models-table tbody tr"), ("system", ".card")):
        page.click(f"nav a[data-page={where}]")
        page.wait_for_selector(ready)
    assert len(urls) >= 8
    assert [u for u in urls if not u.startswith(f"{server.url}/")] == []
    csp = requests.get(f"{server.url}/ui", timeout=5).headers["content-security-policy"]
    assert "default-src 'self'" in csp and "connect-src 'self'" in csp


def test_reply_grows_while_streaming(page: Page, server: Server) -> None:
    open_ui(page, server)
    page.evaluate(
        """() => {
        window.samples = [];
        new MutationObserver(() => {
          const m = [...document.querySelectorAll('.message.assistant')].pop();
          if (m) window.samples.push([m.querySelector('.content').textContent.length,
                                      m.classList.contains('streaming')]);
        }).observe(document.querySelector('#messages'),
                   {subtree: true, childList: true, characterData: true});
        }"""
    )
    send(page, "Tell me about rivers and lakes.", max_tokens=80)
    wait_done(page)
    samples = page.evaluate("window.samples")
    growing = sorted({n for n, streaming in samples if streaming and n > 1})
    assert len(growing) >= 3, samples  # text appeared in several steps before the end
    final = len(last_reply(page).locator(".content").text_content() or "")
    assert final >= growing[-1] - 1
    stats = last_reply(page).locator(".stats").text_content() or ""
    assert "tokens/s" in stats and "first token" in stats


def test_stop_ends_the_stream_and_frees_the_engine_slot(page: Page, server: Server) -> None:
    open_ui(page, server)
    send(page, "Write a very long story about a lighthouse keeper.", max_tokens=4000)
    page.wait_for_function(
        "() => { const m = [...document.querySelectorAll('.message.assistant.streaming')].pop();"
        " return m && m.querySelector('.content').textContent.length > 20; }"
    )
    assert not engine_idle(server, STARTER_ID)
    page.click("#stop")
    wait_done(page)
    assert "stopped" in (last_reply(page).locator(".stats").text_content() or "")
    assert page.is_visible("#send") and not page.is_visible("#stop")
    wait_for(lambda: engine_idle(server, STARTER_ID), 5, "the engine slot to free")


def test_switching_model(page: Page, server: Server) -> None:
    bodies = sent_bodies(page)
    open_ui(page, server)
    page.select_option("#model", GEMMA_ID)
    send(page, "Hello!", max_tokens=8)
    wait_done(page)
    assert [b["model"] for b in bodies] == [GEMMA_ID]
    assert not last_reply(page).get_attribute("class").count("error")
    assert (last_reply(page).locator(".content").text_content() or "").strip()
    page.select_option("#model", STARTER_ID)
    send(page, "And you?", max_tokens=8)
    wait_done(page)
    assert [b["model"] for b in bodies] == [GEMMA_ID, STARTER_ID]
    assert [m["role"] for m in bodies[1]["messages"]] == ["user", "assistant", "user"]


ATTACK = "<img src=x onerror=window.pwned=1> <script>window.pwned=2</script> **bold**"


def test_model_output_is_shown_as_text(page: Page, server: Server) -> None:
    """The real engine is made to write markup (a grammar added to the browser's request)."""
    grammar = "root ::= " + json.dumps(ATTACK)

    def force(route: Route) -> None:
        body = json.loads(route.request.post_data or "{}")
        route.continue_(post_data=json.dumps({**body, "grammar": grammar}))

    page.route("**/v1/chat/completions", force)
    open_ui(page, server)
    send(page, "Say something.", max_tokens=60)
    wait_done(page)
    content = last_reply(page).locator(".content")
    assert "<img src=x onerror=window.pwned=1>" in (content.text_content() or "")
    assert "<script>window.pwned=2</script>" in (content.text_content() or "")
    assert content.locator("img, script").count() == 0
    assert content.locator("strong").text_content() == "bold"
    assert page.evaluate("window.pwned") is None
    page.reload()  # the stored conversation renders the same way
    page.wait_for_selector(".message.assistant .content strong")
    assert page.locator("img, script:not([src])").count() == 0
    assert page.evaluate("window.pwned") is None


def test_models_and_system_pages_show_real_values(page: Page, server: Server) -> None:
    server.client().chat.completions.create(
        model=STARTER_ID, messages=[{"role": "user", "content": "Hi"}], max_tokens=2
    )
    installed = {
        m["id"]: m for m in requests.get(f"{server.url}/api/models", timeout=10).json()["models"]
    }
    open_ui(page, server, "models")
    row = page.locator("#models-table tbody tr", has_text=STARTER_ID)
    row.wait_for()  # the table is filled after the page loads: wait for it, not read at once
    cells = row.locator("td").all_text_contents()
    starter = installed[STARTER_ID]
    assert cells[:4] == [
        STARTER_ID,
        "98.4 MB",
        starter["quantization"],
        str(starter["context_length"]),
    ]
    assert cells[5] == "loaded"
    assert page.locator("#models-table tbody tr", has_text=GEMMA_ID).count() == 1

    page.click("nav a[data-page=system]")
    page.wait_for_selector(".card[data-card=RAM]")
    system = requests.get(f"{server.url}/api/stats", timeout=10).json()["system"]
    ram = page.locator(".card[data-card=RAM]").text_content() or ""
    assert f"of {system['ram_total'] / 1e9:.1f} GB" in ram
    assert f"{system['cpu_cores']} cores" in (
        page.locator(".card[data-card=CPU]").text_content() or ""
    )
    engines = page.locator("#engines tbody tr", has_text=STARTER_ID)
    assert engines.count() == 1 and " / " in (engines.locator("td").nth(4).text_content() or "")


def test_phone_sized_screen_keeps_chat_usable(browser: Browser, server: Server) -> None:
    context = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True)
    page = context.new_page()
    page.set_default_timeout(60_000 * SLOWDOWN)
    try:
        open_ui(page, server)
        width = page.evaluate("document.scrollingElement.scrollWidth")
        assert width <= PHONE["width"]
        box = page.locator("#prompt").bounding_box()
        assert box is not None and box["y"] + box["height"] <= PHONE["height"]
        assert page.is_visible("#send")
        send(page, "Hi", max_tokens=8)
        wait_done(page)
        assert (last_reply(page).locator(".content").text_content() or "").strip()
        right = "() => document.querySelector('#sidebar').getBoundingClientRect().right"
        assert page.evaluate(right) <= 0  # the conversations slide in on demand
        page.click("#toggle-sidebar")
        page.wait_for_function(f"() => ({right})() > 100")
        page.click("#new-chat")
        assert page.locator("#conversations li").count() == 2
    finally:
        context.close()


@pytest.mark.parametrize("theme", ["light", "dark"])
def test_screenshots(browser: Browser, server: Server, theme: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(viewport={"width": 1200, "height": 760}, color_scheme=theme)  # type: ignore[arg-type]
    page = context.new_page()
    page.set_default_timeout(60_000 * SLOWDOWN)
    try:
        open_ui(page, server)
        assert page.evaluate("document.documentElement.dataset.theme") == theme
        send(page, "Give me three tips for saving water, as a list.", max_tokens=120)
        wait_done(page)
        page.click("#settings-toggle")  # closed again, as people mostly see it
        page.screenshot(path=SHOTS / f"chat-{theme}.png")
        page.click("nav a[data-page=models]")
        page.wait_for_selector("#models-table tbody tr")
        page.screenshot(path=SHOTS / f"models-{theme}.png")
        page.click("nav a[data-page=system]")
        page.wait_for_selector("#engines tbody tr")
        page.wait_for_selector(".card[data-card=Requests]")
        page.screenshot(path=SHOTS / f"system-{theme}.png")
    finally:
        context.close()
    for name in ("chat", "models", "system"):
        assert (SHOTS / f"{name}-{theme}.png").stat().st_size > 10_000


def test_pull_from_the_hub_shows_live_progress(
    browser: Browser, tmp_path: Path, model_store: Path, engine_binary: EngineBinary
) -> None:
    """Search the (local) Hub from the models page, pull, watch the bar move, see it listed."""
    with FakeHub() as hub:
        hub.add("tester/SmolLM2-135M-Instruct-GGUF", {SMOL: model_store / SMOL}, downloads=3)
        hub.rate = 40_000_000  # about 2.5 s: the bar has time to move
        (tmp_path / "models").mkdir()
        srv = start_server(
            tmp_path,
            tmp_path / "models",
            engine_binary,
            HF_ENDPOINT=hub.url,
            OFFGRID_DATA_DIR=str(tmp_path / "data"),
        )
        with own_page(browser, srv) as page:
            page.goto(f"{srv.url}/ui#models")
            page.wait_for_selector("#models-note:has-text('No model installed')")
            page.fill("#hub-q", "smol")
            page.click("#hub-search button")
            page.click("#hub-results tbody tr:has-text('Q4_1') button")
            page.wait_for_function(
                "() => { const b = document.querySelector('.pull progress');"
                " return b && b.value > 0 && b.value < 100; }"
            )
            page.wait_for_selector(".pull:has-text('done')")
            assert page.locator(".pull progress").evaluate("b => b.value") == 100
            page.wait_for_selector(f"#models-table tbody tr:has-text('{STARTER_ID}')")
            assert hub.served[SMOL] == (model_store / SMOL).stat().st_size


def test_pull_from_a_paired_peer_shows_progress(
    browser: Browser, tmp_path: Path, model_store: Path, engine_binary: EngineBinary
) -> None:
    """Two nodes paired on loopback (no discovery): B's models page lists A's models and
    pulls one with the same progress as a Hub pull."""
    ports = {"a": free_port(), "b": free_port()}
    servers = {}
    for name, files in (("a", {SMOL: SMOL}), ("b", {})):
        (tmp_path / name / "home").mkdir(parents=True)
        link_models(model_store, tmp_path / name / "models", files)
        servers[name] = start_loopback_node(tmp_path, name, ports[name], engine_binary)
    a, b = servers["a"], servers["b"]
    try:
        code = requests.post(f"{a.url}/api/peers/pairing", timeout=10).json()["code"]
        body = {"address": f"127.0.0.1:{ports['a']}", "code": code}
        requests.post(f"{b.url}/api/peers", json=body, timeout=30).raise_for_status()

        def offered() -> bool:
            state = requests.get(f"{b.url}/api/peers", timeout=10).json()
            return STARTER_ID in state["peers"][0].get("load", {}).get("models", [])

        wait_for(offered, 15, "B to hear A's models (asked every 5 s)")
        with own_page(browser, b) as page:
            page.goto(f"{b.url}/ui#models")
            page.click(f"#peer-models tbody tr:has-text('{STARTER_ID}') button")
            page.wait_for_selector(".pull:has-text('done')")
            assert "peer:node-a" in page.locator(".pull").first.inner_text()
            page.wait_for_selector(f"#models-table tbody tr:has-text('{STARTER_ID}')")
        pulled = tmp_path / "b" / "models" / SMOL
        assert pulled.stat().st_size == STARTER.size
    finally:
        a.stop()


def test_conversations_are_kept_renamed_and_deleted(page: Page, server: Server) -> None:
    open_ui(page, server)
    send(page, "Remember me", max_tokens=4)
    wait_done(page)
    page.click("#new-chat")
    titles = page.locator("#conversations .title")
    assert titles.all_text_contents() == ["New chat", "Remember me"]
    page.get_by_label("Rename Remember me").click()
    page.fill("#conversations input", "Field notes")
    page.press("#conversations input", "Enter")
    page.reload()
    page.wait_for_selector("#conversations .title")
    assert titles.all_text_contents() == ["New chat", "Field notes"]
    titles.nth(1).click()
    assert page.locator(".message.user .content").all_text_contents() == ["Remember me"]
    page.get_by_label("Delete New chat").click()
    assert titles.all_text_contents() == ["Field notes"]


def test_dashboard_asks_for_a_key_and_keeps_it_in_the_tab(
    browser: Browser, tmp_path: Path, model_store: Path, engine_binary: EngineBinary
) -> None:
    """With API keys on (issue 15), the page asks for one, says when it is refused, and keeps
    the good one in sessionStorage (not localStorage) for the tab's later calls."""
    data = tmp_path / "data"
    key = KeyStore(data / "api-keys.json").create("dashboard", "read")
    models = link_models(model_store, tmp_path / "models", {SMOL: SMOL})
    srv = start_server(tmp_path, models, engine_binary, OFFGRID_DATA_DIR=str(data))
    listed = f"#models-table tbody tr:has-text('{STARTER_ID}')"
    with own_page(browser, srv) as page:
        page.goto(f"{srv.url}/ui#models")
        page.wait_for_selector("#key-dialog[open]")
        page.fill("#api-key", "og-wrong")
        page.click("#key-submit")
        page.wait_for_selector("#key-dialog[open] #key-note:has-text('refused')")
        page.fill("#api-key", key)
        page.click("#key-submit")
        page.wait_for_selector(listed)
        assert page.evaluate("sessionStorage.getItem('offgrid-api-key')") == key
        assert page.evaluate("localStorage.getItem('offgrid-api-key')") is None
        page.reload()
        page.wait_for_selector(listed)
        assert not page.is_visible("#key-dialog")


# -- issue 16: charts, the 1280 px layout, vision and thinking in the chat -----------------
def chart_points(page: Page, title: str) -> int:
    points = page.get_attribute(f".chart[data-chart='{title}'] polyline", "points") or ""
    return len(points.split())


def test_system_charts_draw_the_last_hour_and_survive_a_reload(page: Page, server: Server) -> None:
    for _ in range(2):
        server.client().chat.completions.create(
            model=STARTER_ID, messages=[{"role": "user", "content": "Hi"}], max_tokens=2
        )
    open_ui(page, server, "system")
    charts_drawn(page)
    page.reload()  # the history is the server's: the reloaded page draws it at once
    charts_drawn(page)


def charts_drawn(page: Page) -> None:
    page.wait_for_selector(".chart[data-chart='Requests/min'] polyline")
    for title in ("Tokens/s", "Requests/min", "RAM used"):
        assert chart_points(page, title) >= 2
    label = page.locator(".chart[data-chart='Requests/min'] .small").text_content() or ""
    peak = re.search(r"max ([0-9.]+) /min", label)
    assert peak and float(peak.group(1)) > 0, label
    ram = page.locator(".chart[data-chart='RAM used'] .big").text_content() or ""
    assert ram.endswith(("GB", "MB")), ram


LONG_PATH = "/media/usb0/OffGridModelsBackupFromTheFieldStation2025/LanguageModels/gguf"


def test_models_disk_card_keeps_a_long_path_inside_at_1280px(
    browser: Browser, server: Server
) -> None:
    """Issue 16: the models path and its bar ran into the next card at 1280 px. The path is
    made long (and unbreakable) in the server's real answer, as a USB stick's can be."""

    def long_path(route: Route) -> None:
        resp = route.fetch()
        body = resp.json()
        body["system"]["models_dir"] = LONG_PATH
        route.fulfill(response=resp, json=body)

    with watched_page(browser, width=1280) as page:
        page.route("**/api/stats", long_path)
        open_ui(page, server, "system")
        disk = page.locator(".card[data-card='Models disk']")
        disk.locator("meter").wait_for()
        assert LONG_PATH in (disk.text_content() or "")
        card = disk.bounding_box()
        after = page.locator(".card[data-card='Models disk'] + .card").bounding_box()
        assert card is not None and after is not None
        assert card["x"] + card["width"] <= after["x"]
        for child in disk.locator(":scope > *").all():
            box = child.bounding_box()
            assert box is not None
            assert card["x"] <= box["x"] and box["x"] + box["width"] <= card["x"] + card["width"]
        assert disk.evaluate("c => c.scrollWidth <= c.clientWidth")


@pytest.fixture(scope="module")
def thinking_server(
    tmp_path_factory: pytest.TempPathFactory, model_store: Path
) -> Iterator[Server]:
    """A real server over the fake engine, whose streams reason before they answer; one
    model more, "embedder", for the picker to leave out."""
    tmp = tmp_path_factory.mktemp("thinking")
    (tmp / "home").mkdir()
    files = {f.file_name: f.file_name for f in (STARTER, GEMMA)}
    models = link_models(model_store, tmp / "models", {**files, "embedder.gguf": SMOL})
    fake = EngineBinary(Path(FAKE_ENGINE), "cpu", "test")
    srv = start_server(tmp, models, fake, FAKE_ENGINE_REASONING="3")
    yield srv
    srv.stop()


# What the server will say of each model (issue 16's other half); faked until it does
KINDS = {
    GEMMA_ID: ("chat", ["completion", "vision"]),
    STARTER_ID: ("chat", ["completion"]),
    "embedder": ("embedding", ["embedding"]),
}
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


def with_capabilities(route: Route) -> None:
    resp = route.fetch()
    body = resp.json()
    for m in body["models"]:
        m["kind"], m["capabilities"] = KINDS[m["id"]]
    route.fulfill(response=resp, json=body)


def sent_bodies(page: Page) -> list[dict[str, Any]]:
    bodies: list[dict[str, Any]] = []
    page.on(
        "request",
        lambda r: (
            bodies.append(json.loads(r.post_data or "{}"))
            if r.url.endswith("/v1/chat/completions")
            else None
        ),
    )
    return bodies


def test_attach_is_offered_for_a_vision_model_and_sends_image_url(
    browser: Browser, thinking_server: Server
) -> None:
    with watched_page(browser) as page:
        page.route("**/api/models", with_capabilities)
        bodies = sent_bodies(page)
        open_ui(page, thinking_server)
        options = page.locator("#model option").evaluate_all("os => os.map(o => o.value)")
        assert sorted(options) == sorted([GEMMA_ID, STARTER_ID])  # no embedding model
        page.select_option("#model", STARTER_ID)
        assert not page.is_visible("#attach")
        page.select_option("#model", GEMMA_ID)
        assert page.is_visible("#attach")
        page.set_input_files(
            "#image-input", {"name": "dot.png", "mimeType": "image/png", "buffer": PNG}
        )
        page.wait_for_selector("#attachment img")
        send(page, "What is in this picture?", max_tokens=4)
        wait_done(page)
        url = "data:image/png;base64," + base64.b64encode(PNG).decode()
        assert bodies[-1]["model"] == GEMMA_ID
        assert bodies[-1]["messages"][-1]["content"] == [
            {"type": "text", "text": "What is in this picture?"},
            {"type": "image_url", "image_url": {"url": url}},
        ]
        assert page.get_attribute(".message.user img.thumb", "src") == url
        assert not page.is_visible("#attachment")  # sent once, not with the next message
        page.select_option("#model", STARTER_ID)
        assert not page.is_visible("#attach")


def test_thinking_is_shown_apart_from_the_answer_and_not_sent_back(
    browser: Browser, thinking_server: Server
) -> None:
    with watched_page(browser) as page:
        bodies = sent_bodies(page)
        open_ui(page, thinking_server)
        send(page, "Think first.", max_tokens=3)
        wait_done(page)
        reply = last_reply(page)
        assert reply.locator(".thinking").is_visible()
        assert not reply.locator(".thinking .reasoning").is_visible()  # folded once done
        assert reply.locator(".thinking .reasoning").text_content() == "think0 think1 think2 "
        answer = reply.locator(".content").text_content() or ""
        assert answer.startswith("tok0") and "think" not in answer
        reply.locator(".thinking summary").click()
        assert reply.locator(".thinking .reasoning").is_visible()
        send(page, "And again.", max_tokens=3)
        wait_done(page)
        assert [m["role"] for m in bodies[-1]["messages"]] == ["user", "assistant", "user"]
        assert "think" not in json.dumps(bodies[-1]["messages"])
