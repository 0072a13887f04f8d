"""The console page in a real headless Chromium (Debian's), driven by Playwright."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
import subprocess
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
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
async def browser(chromium: str) -> AsyncIterator[Any]:
    async with playwright.async_playwright() as driver:
        launched = await driver.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
async def page(browser: Any) -> Any:
    return await browser.new_page(viewport={"width": 1280, "height": 900})


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
    await expect(found.locator("button.attr[data-key='card'] .v")).to_have_text("visa")
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
    # The page's search answered 10 (per page 10); the tail added one: not "11 events".
    await expect(page.locator("#summary")).to_have_text(
        "10 events of every service · page 1 · older ones on the next pages"
        " · 1 more arrived since (live tail)"
    )
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

        # Then the page searches every service's last hour: no service to choose first.
        await expect(page.locator("#service")).to_have_value("")
        await expect(page.locator(ROWS)).to_have_count(47)
        await expect(page.locator("#summary")).to_contain_text("47 events of every service")
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


# --- searching across services ---------------------------------------------------------------

SERVICES = ("api-gateway", "checkout", "payments")
REQUESTS = 40
SCREENSHOT = Path(__file__).parent.parent / "docs" / "console.png"
TRACEBACK = (
    "payment declined for order {order}\n"
    "Traceback (most recent call last):\n"
    '  File "/app/payments/charge.py", line 88, in charge\n'
    "    receipt = provider.capture(intent, amount=total)\n"
    '  File "/app/payments/provider.py", line 41, in capture\n'
    "    raise CardDeclined(code)\n"
    "payments.errors.CardDeclined: card_declined (insufficient_funds)"
)


def trace_of(n: int) -> str:
    return hashlib.sha256(f"request {n}".encode()).hexdigest()[:32]


def traffic(now_ms: int) -> list[dict[str, Any]]:
    """Most of an hour of a shop's requests, each traced through three services: the gateway
    logs the request, checkout places the order, payments charges the card (every seventh is
    declined, with a traceback, and the gateway answers 502)."""
    events: list[dict[str, Any]] = []
    for n in range(REQUESTS):
        start = now_ms - 60_000 - n * 85_000
        order = 52_000 + n
        region = ("eu-west-1", "us-east-1")[n % 2]
        declined = n % 7 == 0
        items = 1 + n % 4
        trace = {"trace_id": trace_of(n)}
        status, took = (502, 1240 + n) if declined else (201, 80 + n % 30)
        events.append(
            make_event(
                n * 10,
                service="api-gateway",
                timestamp=start + 90 + n % 40,
                level="warn" if declined else "info",
                message=f"POST /api/orders {status} in {took} ms",
                attributes={"http.route": "/api/orders", "status": status, "region": region},
                **trace,
            )
        )
        events.append(
            make_event(
                n * 10 + 1,
                service="checkout",
                timestamp=start + 5,
                level="info",
                message=f"order {order} placed: {items} x item, {12.5 * items:.2f} EUR",
                attributes={"order_id": order, "items": items, "region": region},
                **trace,
            )
        )
        events.append(
            make_event(
                n * 10 + 2,
                service="payments",
                timestamp=start + 40,
                level="error" if declined else "info",
                message=TRACEBACK.format(order=order)
                if declined
                else f"card charged for order {order}",
                attributes={"order_id": order, "provider": "stripe", "attempt": 1},
                **trace,
            )
        )
    return events


def newest_first(events: list[dict[str, Any]]) -> list[str]:
    return [e["id"] for e in sorted(events, key=lambda e: e["timestamp"], reverse=True)]


async def store_traffic(clients: Clients, settings: Settings, now_ms: int) -> list[dict[str, Any]]:
    events = traffic(now_ms)
    await store_events(clients, settings, events)
    await ServiceRegistry(clients.dynamodb, settings.table_name, 30).note(list(SERVICES))
    return events


@pytest.mark.timeout(300)
async def test_a_search_spans_every_service_and_a_click_follows_a_trace_or_an_attribute(
    clients: Clients, settings: Settings, browser: Any
) -> None:
    expect = playwright.expect
    events = await store_traffic(clients, settings, int(time.time() * 1000))
    page = await browser.new_page(viewport={"width": 1280, "height": 800})
    failures = watch_for_failures(page)

    async with running_console(settings) as url:
        # No service named: every service's events, newest first, on one page.
        await page.goto(f"{url}/?since=1h&limit=200")
        await expect(page.locator(ROWS)).to_have_count(len(events))
        assert await row_ids(page) == newest_first(events)
        shown = await page.locator(f"{ROWS} td.svc").all_text_contents()
        assert set(shown) == set(SERVICES)

        if os.environ.get("LOGPIPE_REFRESH_SCREENSHOT") == "1":
            await page.goto(f"{url}/")
            await expect(page.locator(ROWS)).to_have_count(100)
            await expect(page.locator("#chart rect").first).to_be_visible()
            SCREENSHOT.parent.mkdir(exist_ok=True)
            await page.screenshot(path=str(SCREENSHOT))
            await page.goto(f"{url}/?since=1h&limit=200")
            await expect(page.locator(ROWS)).to_have_count(len(events))

        # A trace id of a checkout event: the whole trace, in all three services.
        traced = [e for e in events if e.get("trace_id") == trace_of(3)]
        checkout = next(e for e in traced if e["service"] == "checkout")
        await page.locator(f"{ROWS}[data-id='{checkout['id']}'] a.trace").click()
        await expect(page.locator(ROWS)).to_have_count(len(traced))
        assert await row_ids(page) == newest_first(traced)
        assert {e["service"] for e in traced} == set(SERVICES)
        await expect(page.locator("#trace-id")).to_have_value(trace_of(3))
        await expect(page.locator("#service")).to_have_value("")
        # Searched over the last day, wider than the hour the trace was clicked in.
        assert "trace_id=" in page.url and "service=" not in page.url
        assert "since=24h" in page.url

        # Back: the search before the click, from the URL.
        await page.go_back()
        await expect(page.locator(ROWS)).to_have_count(len(events))
        await expect(page.locator("#trace-id")).to_have_value("")

        # An attribute value: only the events with it; a second one narrows further (AND).
        order = [e for e in events if (e.get("attributes") or {}).get("order_id") == 52_004]
        row = page.locator(f"{ROWS}[data-id='{order[0]['id']}']")
        await row.locator("button.attr[data-key='order_id']").click()
        await expect(page.locator(ROWS)).to_have_count(len(order))
        assert await row_ids(page) == newest_first(order)
        await expect(page.locator("#chips .chip span")).to_have_text(["order_id = 52004"])

        both = [e for e in order if e["attributes"].get("region") == "eu-west-1"]
        assert 0 < len(both) < len(order)
        await page.locator(f"{ROWS} button.attr[data-key='region']").first.click()
        await expect(page.locator(ROWS)).to_have_count(len(both))
        assert await row_ids(page) == newest_first(both)
        assert "attr.order_id=52004" in page.url and "attr.region=eu-west-1" in page.url

        # Removing the first chip leaves the region's events.
        region = [e for e in events if (e.get("attributes") or {}).get("region") == "eu-west-1"]
        await page.locator("#chips .chip").first.locator("button.remove").click()
        await expect(page.locator(ROWS)).to_have_count(len(region))
        assert await row_ids(page) == newest_first(region)

    assert failures == []


@pytest.mark.timeout(300)
async def test_the_histogram_counts_the_whole_range_not_the_page(
    clients: Clients, settings: Settings, page: Any
) -> None:
    expect = playwright.expect
    events = await store_traffic(clients, settings, int(time.time() * 1000))
    failures = watch_for_failures(page)

    async with running_console(settings) as url:
        await page.goto(f"{url}/?since=1h&limit=50")
        await expect(page.locator(ROWS)).to_have_count(50)
        chart = page.locator("#chart")
        await expect(chart).to_have_attribute("data-total", str(len(events)))
        await expect(page.locator("#chart-total")).to_have_text(f"{len(events)} events")
        await expect(page.locator("#chart-partial")).to_be_hidden()

        # Levels chosen: the bars and the total count only those.
        wanted = [e for e in events if e["level"] in ("warn", "error")]
        await page.check("#levels input[value='warn']")
        await page.check("#levels input[value='error']")
        await page.click("#go")
        await expect(page.locator(ROWS)).to_have_count(len(wanted))
        await expect(chart).to_have_attribute("data-total", str(len(wanted)))
        assert await page.locator("#chart rect.f-info").count() == 0

    # A read budget too small for a day of three services: the counts say they are partial.
    small = dataclasses.replace(settings, query_budget=1)
    async with running_console(small) as url:
        await page.goto(f"{url}/?since=24h&limit=10")
        await expect(page.locator("#chart-partial")).to_be_visible()
        await expect(page.locator("#chart-partial")).to_contain_text("complete: false")

    assert failures == []


@pytest.mark.timeout(300)
async def test_a_new_search_clears_the_old_rows_while_it_runs(
    clients: Clients, settings: Settings, page: Any
) -> None:
    expect = playwright.expect
    events = await store_traffic(clients, settings, int(time.time() * 1000))
    failures = watch_for_failures(page)
    release = asyncio.Event()

    async def held(route: Any) -> None:
        await release.wait()
        await route.continue_()

    async with running_console(settings) as url:
        await page.goto(f"{url}/?since=1h&limit=500")
        await expect(page.locator(ROWS)).to_have_count(len(events))

        # Every search answer is held until the old rows are seen gone.
        await page.route("**/api/logs?*", held)
        await page.fill("#service", "payments")
        await page.click("#go")
        await expect(page.locator("#loading")).to_be_visible()
        await expect(page.locator(ROWS)).to_have_count(0)
        await expect(page.locator("#summary")).to_have_text("Searching…")
        release.set()

        payments = [e for e in events if e["service"] == "payments"]
        await expect(page.locator(ROWS)).to_have_count(len(payments))
        await expect(page.locator("#loading")).to_be_hidden()
        assert await row_ids(page) == newest_first(payments)
        await page.unroute("**/api/logs?*")

        # An answer that fails leaves no rows and says why.
        await page.fill("#service", "not a service!")
        await page.click("#go")
        await expect(page.locator("#error")).to_be_visible()
        await expect(page.locator(ROWS)).to_have_count(0)
        await expect(page.locator("#summary")).to_have_text(
            "The search failed: see the message above."
        )

    assert failures == []


@pytest.mark.timeout(300)
async def test_times_show_in_utc_or_the_browsers_zone_and_the_choice_survives_a_reload(
    clients: Clients, settings: Settings, browser: Any
) -> None:
    expect = playwright.expect
    events = await store_traffic(clients, settings, int(time.time() * 1000))
    newest = max(events, key=lambda e: e["timestamp"])
    at = datetime.fromtimestamp(newest["timestamp"] / 1000, UTC)
    kolkata = at.astimezone(timezone(timedelta(hours=5, minutes=30)))
    page = await browser.new_page(timezone_id="Asia/Kolkata")
    failures = watch_for_failures(page)

    def shown(moment: datetime) -> str:
        return moment.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]

    async with running_console(settings) as url:
        await page.goto(f"{url}/?since=1h")
        first_time = page.locator(f"{ROWS} td.time").first
        await expect(first_time).to_have_text(shown(at))
        await expect(page.locator("#time-head")).to_have_text("Time (UTC)")

        await page.check("#tz-local")
        await expect(first_time).to_have_text(shown(kolkata))
        await expect(page.locator("#time-head")).to_contain_text("local")
        await expect(page.locator("#time-head")).to_contain_text("UTC+05:30")
        assert "tz=local" in page.url

        await page.reload()
        await expect(page.locator("#tz-local")).to_be_checked()
        await expect(first_time).to_have_text(shown(kolkata))

        await page.go_back()
        await expect(page.locator("#tz-utc")).to_be_checked()
        await expect(first_time).to_have_text(shown(at))

    assert failures == []
