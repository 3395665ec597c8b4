"""The Models page in headless Chromium against daphne and a real worker."""

import pytest

from tests.conftest import login

pytestmark = pytest.mark.django_db(transaction=True)


def test_train_random_forest_shows_progress_and_chart_live(live_stack, page, alice):
    login(page, live_stack.url, "alice", "alice-password-1")
    page.wait_for_selector('#connection[data-state="live"]')
    page.click("text=Train Random Forest")
    page.wait_for_function(
        "Number(document.querySelector('#focus-progress').getAttribute('aria-valuenow'))"
        " >= 100",
        timeout=120_000,
    )
    assert page.text_content("#focus-epoch") == "Epoch 20/20"
    # The last epoch's event arrives just before the completion event.
    page.wait_for_selector("#focus-status.status-completed", timeout=30_000)
    # Epochs pushed before the page listened come from the API, which may
    # answer after "completed" shows.
    page.wait_for_function(
        "window.mltrack.charts.every((c) => c.pointCounts().every((n) => n >= 20))"
    )
    counts = page.evaluate("window.mltrack.charts.map((c) => c.pointCounts())")
    assert counts == [[20, 20], [20, 20]]
    assert page.console_problems == []
