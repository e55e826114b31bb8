"""The web UI in a real headless browser: Debian's Chromium driven by
Playwright, against the real server over the demo data.

Screenshots go to ``test-artifacts/`` at the repository root.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from eventtrail.calls import call_error, call_request, call_response
from eventtrail.demo import SERVICE_A, SERVICE_B, demo_flows
from eventtrail.embedded.queue import SQLiteQueue
from eventtrail.embedded.store import SQLiteStore
from eventtrail.times import format_moment
from eventtrail.web import BackgroundServer, build_app
from tests.web.conftest import TOKEN, Backend

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# The machine's network is closed: without these Chromium waits on Google hosts.
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
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

pytestmark = [
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(), reason="needs Debian's chromium (apt-get install chromium)"
    ),
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.set_default_timeout(10_000)
    yield page
    context.close()


def screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"ui-{name}.png"), full_page=True)


def test_requests_list_then_a_waterfall(page: Page, server: BackgroundServer, backend: Backend) -> None:
    page.goto(server.url)
    rows = page.get_by_test_id("request-row")
    expect(rows).to_have_count(50)
    newest = max(backend.events, key=lambda event: event.timestamp).request_id
    expect(rows.first).to_have_attribute("data-request-id", newest)
    screenshot(page, "requests")

    page.get_by_test_id("filter-status").select_option("error")
    expect(page.locator('[data-testid=request-row][data-status="ok"]')).to_have_count(0)
    failed = page.locator('[data-testid=request-row][data-status="error"]')
    expect(failed.first).to_be_visible()
    request_id = failed.first.get_attribute("data-request-id")
    assert request_id
    failed.first.click()

    expect(page).to_have_url(re.compile(f"#/requests/{request_id}$"))
    expect(page.get_by_test_id("flow-title")).to_have_text(f"Request {request_id}")
    bars = page.get_by_test_id("waterfall-bar")
    calls = len(backend.store.flow(request_id)) // 2
    expect(bars).to_have_count(calls)
    expect(bars.first).to_have_attribute("data-service", SERVICE_A)
    failed_bar = page.locator('[data-testid=waterfall-bar][data-outcome="failed"]').first
    expect(failed_bar).to_be_visible()
    # Bars stand on one time axis: the second call starts right of the first.
    first_box, second_box = bars.nth(0).bounding_box(), bars.nth(1).bounding_box()
    assert first_box and second_box and second_box["x"] > first_box["x"]
    failed_bar.click()
    detail = page.get_by_test_id("event-detail")
    expect(detail).to_be_visible()
    expect(detail).to_contain_text(request_id)
    expect(detail).to_contain_text(SERVICE_B)
    screenshot(page, "waterfall")


def test_a_call_its_client_gave_up_on_is_shown_apart_from_failures(page: Page, tmp_path: Path) -> None:
    request_id = "0b1c2d3e-4f50-4617-8293-a4b5c6d7e8f0"
    now = datetime.now(UTC)

    def moment(ms: int) -> str:
        return format_moment(now + timedelta(milliseconds=ms))

    with SQLiteStore(tmp_path / "events.db") as store, SQLiteQueue(tmp_path / "queue.db") as queue:
        store.append(
            [
                call_request(request_id, "c1", SERVICE_A, "GET", "/ok", timestamp=moment(0)),
                call_response(
                    request_id,
                    "c1",
                    SERVICE_A,
                    status=200,
                    latency_ms=20,
                    bytes_in=0,
                    bytes_out=2,
                    timestamp=moment(20),
                ),
                call_request(request_id, "c2", SERVICE_B, "GET", "/slow", timestamp=moment(30)),
                call_error(
                    request_id, "c2", SERVICE_B, error="disconnected", elapsed_ms=400, timestamp=moment(430)
                ),
            ]
        )
        with BackgroundServer(build_app(store, queue)) as running:
            page.goto(f"{running.url}#/requests/{request_id}")
            abandoned = page.locator('[data-testid=waterfall-bar][data-outcome="abandoned"]')
            expect(abandoned).to_have_count(1)
            expect(abandoned).to_have_attribute("data-service", SERVICE_B)
            answered = page.locator('[data-testid=waterfall-bar][data-outcome="ok"]')
            colours = {
                bar.evaluate("bar => getComputedStyle(bar).backgroundColor") for bar in (abandoned, answered)
            }
            assert len(colours) == 2 and "rgb(198, 50, 42)" not in colours  # not the failures' red
            expect(page.get_by_test_id("flow-summary")).to_contain_text("· ok")
            expect(page.locator("[data-testid=flow-event] .badge.abandoned")).to_have_count(1)
            expect(page.locator("[data-testid=flow-event] .badge.failed")).to_have_count(0)
            screenshot(page, "abandoned")
            # Health counts it apart from the errors.
            page.goto(f"{running.url}#/health")
            row = page.locator(f'[data-testid=health-row][data-service="{SERVICE_B}"]')
            expect(row.get_by_test_id("health-abandoned")).to_have_text("1")
            other = page.locator(f'[data-testid=health-row][data-service="{SERVICE_A}"]')
            expect(other.get_by_test_id("health-abandoned")).to_have_text("\u2013")  # an en dash: none
            screenshot(page, "health-abandoned")
            # The monitor's point of that minute says so.
            page.goto(f"{running.url}#/monitor")
            card = page.locator(f'[data-testid=monitor-card][data-service="{SERVICE_B}"]')
            expect(card.get_by_test_id("monitor-point").first.locator("title")).to_contain_text("1 abandoned")


def test_health_page_marks_service_b_faulty(page: Page, server: BackgroundServer) -> None:
    page.goto(f"{server.url}/#/health")
    faulty = page.locator('[data-testid=health-row][data-status="faulty"]')
    expect(faulty).to_have_count(1)
    expect(faulty).to_have_attribute("data-service", SERVICE_B)
    expect(faulty).to_have_class(re.compile("faulty"))
    healthy = page.locator(f'[data-testid=health-row][data-service="{SERVICE_A}"]')
    expect(healthy).to_have_attribute("data-status", "ok")
    expect(page.get_by_test_id("health-verdict")).to_contain_text(f"{SERVICE_B} is faulty")
    screenshot(page, "health")

    page.get_by_test_id("nav-map").click()
    node = page.locator(f'[data-testid=map-node][data-service="{SERVICE_B}"]')
    expect(node).to_have_attribute("data-faulty", "true")
    edges = page.get_by_test_id("map-edge")
    expect(edges).to_have_count(2)
    expect(page.locator(f'[data-testid=map-edge][data-service="{SERVICE_B}"]')).to_contain_text("calls")
    screenshot(page, "map")


def test_the_list_refreshes_while_traffic_flows(
    page: Page, server: BackgroundServer, backend: Backend
) -> None:
    page.goto(server.url)
    expect(page.get_by_test_id("request-row")).to_have_count(50)
    (new_flow,) = demo_flows(1, start=datetime.now(UTC), seed=99)
    backend.store.append(new_flow)
    backend.events.extend(new_flow)  # other tests of the session see it too
    # The server polls every second in these tests: the new request shows up on top.
    expect(page.get_by_test_id("request-row").first).to_have_attribute(
        "data-request-id", new_flow[0].request_id, timeout=5_000
    )


def test_the_ui_asks_for_the_token_and_uses_it(page: Page, token_server: BackgroundServer) -> None:
    page.goto(token_server.url)
    dialog = page.get_by_test_id("token-dialog")
    expect(dialog).to_be_visible()
    page.get_by_test_id("token-input").fill(TOKEN)
    page.get_by_test_id("token-submit").click()
    expect(page.get_by_test_id("request-row")).to_have_count(50)
    # A link with the token in its fragment skips the question.
    page.goto(f"{token_server.url}/#token={TOKEN}")
    expect(page.get_by_test_id("request-row")).to_have_count(50)


def test_a_malformed_address_is_an_error_not_a_frozen_ui(page: Page, server: BackgroundServer) -> None:
    # A truncated percent escape makes decodeURIComponent throw.
    page.goto(f"{server.url}/#/requests/%E0%A4%A")
    status = page.get_by_test_id("status-line")
    expect(status).to_contain_text("malformed request id")
    expect(status).to_have_class(re.compile("failed"))
    screenshot(page, "malformed-route")
    # The UI still answers: the list comes back when the address is fixed.
    page.goto(f"{server.url}/#/requests")
    expect(page.get_by_test_id("request-row")).to_have_count(50)
    page.goto(f"{server.url}/#token=%E0%A4%A")
    expect(page.get_by_test_id("request-row")).to_have_count(50)


def test_the_monitor_shows_rate_errors_and_p95_over_time_and_when_b_turned_faulty(
    page: Page, server: BackgroundServer
) -> None:
    page.goto(f"{server.url}/#/monitor")
    cards = page.get_by_test_id("monitor-card")
    expect(cards).to_have_count(2)
    b_card = page.locator(f'[data-testid=monitor-card][data-service="{SERVICE_B}"]')
    a_card = page.locator(f'[data-testid=monitor-card][data-service="{SERVICE_A}"]')
    # Three charts per service: rate, error %, p95; the faulty moment marked on B's.
    expect(b_card.locator("svg.chart")).to_have_count(3)
    expect(b_card.get_by_test_id("faulty-marker")).to_have_count(3)
    expect(a_card.get_by_test_id("faulty-marker")).to_have_count(0)
    since = b_card.get_attribute("data-faulty-since")
    assert since and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:00\.000000Z", since)
    expect(b_card.get_by_test_id("faulty-marker").first).to_have_attribute("data-since", since)
    screenshot(page, "monitor")

    # Clicking a point lists the requests of that bucket that called the service.
    point = b_card.get_by_test_id("monitor-point").last
    bucket = point.get_attribute("data-t")
    point.click()
    listed = page.get_by_test_id("bucket-requests")
    expect(listed).to_be_visible()
    expect(listed).to_have_attribute("data-t", bucket or "")
    rows = page.get_by_test_id("bucket-request-row")
    expect(rows.first).to_be_visible()
    for index in range(min(rows.count(), 5)):
        expect(rows.nth(index)).to_contain_text(SERVICE_B)
    screenshot(page, "monitor-bucket")

    # One service: one chart row per operation.
    page.get_by_test_id("monitor-service").select_option(SERVICE_B)
    operations = page.locator(f'[data-testid=monitor-card][data-service="{SERVICE_B}"]')
    expect(operations.first).to_have_attribute("data-operation", re.compile(r"^[A-Z]+ /"))
    expect(page.locator(f'[data-testid=monitor-card][data-service="{SERVICE_A}"]')).to_have_count(0)
    screenshot(page, "monitor-operations")
