"""A run logged by the client shows up live on the Models page in Chromium, the
same as a run trained by mltrack: small batches epoch by epoch, a large batch as one
coalesced event that the page backfills from the API."""

import sys
import time

import pytest

from sessions.models import ApiToken
from tests.conftest import ROOT, login

sys.path.insert(0, str(ROOT / "client"))
from mltrack_client import Run  # noqa: E402

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_logged_run_draws_live_on_the_models_page(live_stack, page, alice):
    _, token = ApiToken.issue(alice)
    login(page, live_stack.url, "alice", "alice-password-1")
    page.wait_for_selector('#connection[data-state="live"]')
    with Run(live_stack.url, token, name="notebook", total_epochs=200) as run:
        for epoch in range(1, 11):  # slow: a few epochs per request
            run.log(epoch, train_loss=1.0 / epoch, val_accuracy=epoch / 200)
            time.sleep(0.05)
        page.wait_for_function(
            "window.mltrack && window.mltrack.charts[0].pointCounts()[0] >= 10",
            timeout=60_000,
        )
        assert "external" in page.text_content("#focus-title")
        for epoch in range(11, 201):  # fast: one large batch
            run.log(epoch, train_loss=1.0 / epoch, val_accuracy=epoch / 200)
    page.wait_for_selector("#focus-status.status-completed", timeout=60_000)
    page.wait_for_function(
        "window.mltrack.charts[0].pointCounts()[0] === 200", timeout=60_000
    )
    counts = page.evaluate("window.mltrack.charts.map((c) => c.pointCounts())")
    assert counts == [[200, 0], [0, 200]]
    assert page.text_content("#focus-epoch") == "Epoch 200/200"
    assert page.console_problems == []
