"""Outages during a run: daphne or the channel layer's Redis restarts while a
session trains. The page reconnects with backoff, fetches what it missed from the
API, and its charts end with every epoch exactly once."""

from __future__ import annotations

import pytest

from tests.conftest import REDIS_URL, RedisServer, Stack, login

pytestmark = pytest.mark.django_db(transaction=True)

EPOCHS = 60
RECORD_STATES = """() => {
  window.connectionStates = [];
  new MutationObserver(() => window.connectionStates.push(
    document.querySelector('#connection').dataset.state
  )).observe(document.querySelector('#connection'), {attributes: true});
}"""
CHART_EPOCHS = (
    "window.mltrack.charts.map((c) => c.chart.data.datasets"
    ".filter((d) => !d.raw).map((d) => d.data.map((p) => p.x)))"
)


def _start_slow_run(page, base_url: str) -> None:
    """A run of about ten seconds, long enough to restart things in. (20,000
    samples took ~6 s until each run got one BLAS thread; then 2 s, and the run
    could end during the outage.)"""
    page.goto(f"{base_url}/?tab=models")
    page.select_option("#id_modelType", "logistic")
    page.select_option("#id_dataset", "synthetic")
    page.fill("#param-synthetic-samples", "100000")
    page.fill("#id_epochs", str(EPOCHS))
    page.click("#custom-run button[type=submit]")


def _assert_every_epoch_once(page) -> None:
    # The final status can arrive by the socket while the backfill that fetches
    # the missed epochs is still on its way: wait for the charts to fill, then
    # check that no epoch is missing or shown twice.
    page.wait_for_function(
        f"{CHART_EPOCHS}.every((c) => c.every((xs) => xs.length >= {EPOCHS}))",
        timeout=30_000,
    )
    for chart in page.evaluate(CHART_EPOCHS):
        for xs in chart:
            assert xs == list(range(1, EPOCHS + 1))


@pytest.fixture
def own_stack(tmp_path):
    running = Stack(REDIS_URL, tmp_path).start()
    yield running
    running.stop()


def test_a_daphne_restart_mid_run_loses_no_epoch(own_stack, page, alice):
    login(page, own_stack.url, "alice", "alice-password-1")
    _start_slow_run(page, own_stack.url)
    page.wait_for_function(
        "window.mltrack && window.mltrack.store().last >= 3", timeout=120_000
    )
    page.evaluate(RECORD_STATES)
    own_stack.restart_daphne(down_for=1.0)
    page.wait_for_function(
        "document.querySelector('#focus-status').textContent === 'completed'",
        timeout=240_000,
    )
    states = page.evaluate("window.connectionStates")
    assert "reconnecting" in states and states[-1] == "live", states
    assert page.text_content("#focus-epoch") == f"Epoch {EPOCHS}/{EPOCHS}"
    _assert_every_epoch_once(page)
    # While daphne is down the browser logs each refused connection by itself: the
    # socket's retries, the page's fetches when a retry reached the old daphne as it
    # shut down, and any request (Chromium re-asks for the favicon when it likes) that
    # was in flight when daphne stopped and so was reset. The page catches those;
    # anything else is a defect.
    outage_errors = ("WebSocket", "ERR_CONNECTION_REFUSED", "ERR_CONNECTION_RESET")
    problems = [
        p for p in page.console_problems if not any(e in p for e in outage_errors)
    ]
    assert problems == []


def test_a_redis_restart_mid_run_loses_no_epoch(page, alice, tmp_path):
    redis_server = RedisServer(tmp_path / "redis")
    running = Stack(redis_server.url, tmp_path).start()
    try:
        login(page, running.url, "alice", "alice-password-1")
        _start_slow_run(page, running.url)
        page.wait_for_function(
            "window.mltrack && window.mltrack.store().last >= 3", timeout=120_000
        )
        session_url = page.get_attribute("#focus-link", "href")
        page.goto(running.url + session_url)
        page.wait_for_selector('#connection[data-state="live"]')
        page.evaluate(RECORD_STATES)
        redis_server.restart(down_for=1.0)
        page.wait_for_function(
            "document.querySelector('#focus-status').textContent === 'completed'",
            timeout=240_000,
        )
        assert page.text_content("#focus-epoch") == f"Epoch {EPOCHS}/{EPOCHS}"
        _assert_every_epoch_once(page)
        # The final report replaces its placeholder without a reload.
        page.wait_for_selector("table.confusion")
        # The configuration card now says when the run finished, without a reload.
        finished = page.locator("#config tr", has_text="Finished").locator("td")
        assert finished.text_content().startswith("20")
        print("\nconnection states:", page.evaluate("window.connectionStates"))
        problems = [p for p in page.console_problems if "WebSocket" not in p]
        assert problems == []
    finally:
        running.stop()
        redis_server.stop()
