"""The console page in a real headless Chromium (Debian's), driven by Playwright."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from logpipe.aws.clients import Clients
from logpipe.aws.registry import ServiceRegistry
from logpipe.config import Settings
from tests.support.aws import make_event
from tests.test_console import running_console
from tests.test_reader import store_events

pytestmark = pytest.mark.e2e

playwright = pytest.importorskip("playwright.async_api")

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LEVELS = ["info", "info", "warn", "error", "debug", "info", "trace"]
READ_KEY = "browser-read-key-0123"
ROWS = "#results tbody tr.event"


def _apt_get(*args: str) -> None:
    subprocess.run(
        ["apt-get", *args],
        check=True,
        capture_output=True,
        timeout=900,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
    )


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's Chromium, installed with apt-get when missing; the test skips if it cannot be."""
    if not CHROMIUM.exists():
        try:
            try:
                _apt_get("install", "-y", "-q", "chromium")
            except subprocess.CalledProcessError:
                _apt_get("update", "-q")  # a fresh image has no package lists yet
                _apt_get("install", "-y", "-q", "chromium")
        except (OSError, subprocess.SubprocessError) as exc:
            pytest.skip(f"Chromium is missing and 'apt-get install chromium' failed: {exc}")
    return str(CHROMIUM)


@pytest.fixture
async def page(chromium: str) -> AsyncIterator[Any]:
    async with playwright.async_playwright() as driver:
        browser = await driver.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            yield await browser.new_page(viewport={"width": 1280, "height": 900})
        finally:
            await browser.close()


def shop_events(now_ms: int) -> list[dict[str, Any]]:
    """Half an hour of a shop's events, every 40 s, plus one we will search for."""
    events = [
        make_event(
            n,
            service="shop",
            timestamp=now_ms - 60_000 - n * 40_000,
            level=LEVELS[n % len(LEVELS)],
            message=f"order {1000 + n} {'placed' if n % 3 else 'shipped'}",
            attributes={"order": 1000 + n, "region": "eu" if n % 2 else "us"},
        )
        for n in range(45)
    ]
    events.append(
        make_event(
            100,
            service="shop",
            timestamp=now_ms - 5 * 60_000 - 500,
            level="error",
            message="payment declined for order 4242",
            attributes={"order": 4242, "card": "visa"},
        )
    )
    events.append(
        make_event(
            101,
            service="shop",
            timestamp=now_ms - 7 * 60_000 - 500,
            level="warn",
            message="<img src=x onerror=\"document.title='pwned'\"> sent by a client",
        )
    )
    return events


async def row_ids(page: Any) -> list[str]:
    ids: list[str] = await page.locator(ROWS).evaluate_all("rows => rows.map(r => r.dataset.id)")
    return ids


def watch_for_failures(page: Any) -> list[str]:
    """Errors the page raises or logs, as they come."""
    failures: list[str] = []
    page.on("pageerror", lambda exc: failures.append(str(exc)))

    # Errors the page logs itself, or the browser logs for it (a CSP violation, say); the
    # 401s before the key is given and the 400 the page provokes on purpose at the end show
    # up as failed resource loads.
    def console_error(message: Any) -> None:
        if message.type == "error" and not any(
            f"status of {status}" in message.text for status in (400, 401)
        ):
            failures.append(message.text)

    page.on("console", console_error)
    return failures


async def give_the_read_key(page: Any, url: str) -> None:
    """The API answers 401: the page asks for a read key, once, however many requests were
    refused; a wrong key is refused and asked for again."""
    expect = playwright.expect
    await page.goto(url)
    dialog = page.locator("#key-dialog")
    await expect(dialog).to_be_visible()
    await expect(page.locator("#key-reason")).to_contain_text("needs a read key")
    await page.fill("#read-key", "not-the-key-0123")
    await page.click("#key-go")
    await expect(page.locator("#key-reason")).to_contain_text("refused")
    await expect(dialog).to_be_visible()
    await page.fill("#read-key", READ_KEY)
    await page.click("#key-go")
    await expect(dialog).to_be_hidden()


async def search_for_known_events(page: Any) -> None:
    """A search finds its one event; markup in a message is shown as text, never run."""
    expect = playwright.expect
    await page.fill("#q", "declined")
    await page.click("#go")
    await expect(page.locator(ROWS)).to_have_count(1)
    found = page.locator(ROWS).first
    await expect(found).to_contain_text("payment declined for order 4242")
    await expect(found).to_contain_text("card=visa")
    badge = found.locator(".badge")
    await expect(badge).to_have_text("error")
    await expect(badge).to_have_css("background-color", "rgb(229, 55, 43)")

    await page.fill("#q", "onerror")
    await page.click("#go")
    await expect(page.locator(ROWS)).to_have_count(1)
    await expect(page.locator(f"{ROWS} td.msg")).to_have_text(
        "<img src=x onerror=\"document.title='pwned'\"> sent by a client"
    )
    await expect(page.locator("#results img")).to_have_count(0)


async def page_forward_and_back(page: Any) -> None:
    """Through the 47 events, 10 at a time, and back."""
    expect = playwright.expect
    await page.fill("#q", "")
    await page.select_option("#limit", "10")
    await page.click("#go")
    await expect(page.locator(ROWS)).to_have_count(10)
    first_page = await row_ids(page)
    await page.click("#older")
    await expect(page.locator("#summary")).to_contain_text("page 2")
    await expect(page.locator(ROWS)).to_have_count(10)
    second_page = await row_ids(page)
    assert not set(first_page) & set(second_page)
    for _ in range(3):
        await page.click("#older")
    await expect(page.locator("#summary")).to_contain_text("page 5")
    await expect(page.locator(ROWS)).to_have_count(7)
    await expect(page.locator("#older")).to_be_disabled()
    for _ in range(4):
        await page.click("#newer")
    await expect(page.locator("#summary")).to_contain_text("page 1")
    assert await row_ids(page) == first_page


async def tail_live(page: Any, clients: Clients, settings: Settings, tmp_path: Path) -> None:
    """An event stored now appears on top without reloading."""
    expect = playwright.expect
    await page.check("#tail")
    await expect(page.locator("#tail-status")).to_contain_text("Live tail: checked")
    arrival = make_event(
        200,
        service="shop",
        timestamp=int(time.time() * 1000),
        level="fatal",
        message="tail: checkout crashed",
        attributes={"order": 5150},
    )
    await store_events(clients, settings, [arrival])
    await expect(page.locator(ROWS).first).to_contain_text("tail: checkout crashed", timeout=15_000)
    await expect(page.locator(ROWS)).to_have_count(11)
    await page.screenshot(path=str(tmp_path / "console.png"), full_page=True)


async def ask_for_a_bad_time_range(page: Any, tmp_path: Path) -> None:
    """The API's 400 is shown on the page."""
    await page.uncheck("#tail")
    await page.select_option("#range", "custom")
    await page.fill("#since", "last tuesday")
    await page.click("#go")
    await playwright.expect(page.locator("#error")).to_contain_text(
        "since must be a duration back from now"
    )
    await page.screenshot(path=str(tmp_path / "console-error.png"))


@pytest.mark.timeout(900)  # the first run may install Chromium
async def test_a_user_gives_a_read_key_then_searches_pages_and_tails_in_a_real_browser(
    clients: Clients, settings: Settings, page: Any, tmp_path: Path
) -> None:
    expect = playwright.expect
    # One hour bucket per answer: the last hour takes the page two answers or more, the second
    # continuing the first's cursor ("complete": false).
    settings = dataclasses.replace(
        settings,
        read_keys=(READ_KEY,),
        api_keys=("ingest-key-0123",),
        query_budget=settings.shards,
    )
    api_requests: list[Any] = []

    def api_request(request: Any) -> None:
        if "/api/" in request.url:
            api_requests.append(request)

    page.on("request", api_request)
    now_ms = int(time.time() * 1000)
    await store_events(clients, settings, shop_events(now_ms))
    await ServiceRegistry(clients.dynamodb, settings.table_name, 30).note(["shop"])
    failures = watch_for_failures(page)

    async with running_console(settings) as url:
        await give_the_read_key(page, url)

        # Then the page picks the service seen most recently and shows its last hour.
        await expect(page.locator("#service")).to_have_value("shop")
        await expect(page.locator(ROWS)).to_have_count(47)
        assert any("cursor=" in r.url for r in api_requests)  # followed, nobody clicked
        await expect(page.locator("#chart rect.f-error").first).to_be_visible()

        await search_for_known_events(page)
        await page_forward_and_back(page)
        await tail_live(page, clients, settings, tmp_path)
        await ask_for_a_bad_time_range(page, tmp_path)

        assert await page.evaluate("sessionStorage.getItem('logpipe.readKey')") == READ_KEY

    assert await page.title() == "logpipe console"
    assert failures == []
    # The key travels in a header, never in a URL; every answered search carried it.
    assert api_requests and not [r.url for r in api_requests if READ_KEY in r.url]
    keyed = [(await r.all_headers()).get("authorization") for r in api_requests]
    assert keyed.count(f"Bearer {READ_KEY}") >= 10
    assert set(keyed) == {None, "Bearer not-the-key-0123", f"Bearer {READ_KEY}"}
    print(f"screenshots: {tmp_path / 'console.png'} {tmp_path / 'console-error.png'}")
