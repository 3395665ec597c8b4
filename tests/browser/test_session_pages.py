"""The session page and the Compare page in headless Chromium: long runs thinned,
zoom, exports, overlaid curves, and phone width."""

from __future__ import annotations

import time

import pytest

from sessions.models import EpochMetric, TrainingSession
from tests.conftest import login

pytestmark = pytest.mark.django_db(transaction=True)


def _finished_session(owner, epochs: int, **fields) -> TrainingSession:
    fields.setdefault("model_type", "logistic")
    fields.setdefault("dataset", "iris")
    session = TrainingSession.objects.create(
        owner=owner, total_epochs=epochs, current_epoch=epochs, **fields
    )
    session.mark_running("t")
    rows = [
        EpochMetric(
            session=session,
            epoch=epoch,
            # A loss that falls, with one spike the thinning must keep.
            train_loss=25.0 if epoch == epochs * 3 // 4 else 1 / epoch,
            val_loss=1.1 / epoch,
            train_accuracy=min(1.0, 0.5 + epoch / (2 * epochs)),
            val_accuracy=min(1.0, 0.45 + epoch / (2 * epochs)),
            learning_rate=0.01,
            precision=0.8,
            recall=0.7,
            f1=0.75,
        )
        for epoch in range(1, epochs + 1)
    ]
    EpochMetric.objects.bulk_create(rows, batch_size=5000)
    session.mark_completed(
        {
            "totalSeconds": 12.5,
            "classes": ["setosa", "versicolor", "virginica"],
            "confusionMatrix": [[10, 0, 0], [0, 9, 1], [0, 2, 8]],
            "perClass": {
                name: {"precision": 0.9, "recall": 0.9, "f1-score": 0.9, "support": 10}
                for name in ("setosa", "versicolor", "virginica")
            },
        }
    )
    return session


def _open(page, url: str) -> float:
    started = time.monotonic()
    page.goto(url)
    page.wait_for_function("window.mltrack && window.mltrack.charts.length === 4")
    return time.monotonic() - started


def test_a_100000_epoch_session_renders_thinned_and_zooms_finer(
    live_stack, page, alice
):
    long_run = _finished_session(alice, 100_000)
    short_run = _finished_session(alice, 100)
    login(page, live_stack.url, "alice", "alice-password-1")
    short_seconds = _open(page, f"{live_stack.url}/sessions/{short_run.pk}/")
    long_seconds = _open(page, f"{live_stack.url}/sessions/{long_run.pk}/")
    print(
        f"\nopened 100 epochs in {short_seconds:.2f}s, 100,000 in {long_seconds:.2f}s"
    )
    counts = page.evaluate("window.mltrack.charts.map((c) => c.pointCounts())")
    flat = [n for chart in counts for n in chart]
    assert len(flat) == 8 and all(2 <= n <= 1000 for n in flat), counts
    assert all(n >= 900 for n in counts[0] + counts[1]), counts
    # The spike at epoch 75,000 is still drawn.
    peak = page.evaluate(
        "Math.max(...window.mltrack.charts[0].chart.data.datasets[0].data"
        ".map((p) => p.y))"
    )
    assert peak == 25.0
    html_bytes = len(page.content())
    print(f"page HTML: {html_bytes / 1024:.0f} KiB")
    assert "Long run" in page.text_content("#chart-note")

    page.fill("#zoom-from", "50001")
    page.fill("#zoom-to", "50300")
    page.click("#zoom-form button[type=submit]")
    page.wait_for_function(
        "window.mltrack.charts[0].pointCounts()[0] === 300", timeout=30_000
    )
    xs = page.evaluate(
        "window.mltrack.charts[0].chart.data.datasets[0].data.map((p) => p.x)"
    )
    assert xs == list(range(50_001, 50_301))
    page.click("#zoom-reset")
    page.wait_for_function("window.mltrack.charts[0].pointCounts()[0] > 300")
    assert page.console_problems == []


def test_drag_across_a_chart_zooms_in(live_stack, page, alice):
    session = _finished_session(alice, 200)
    login(page, live_stack.url, "alice", "alice-password-1")
    _open(page, f"{live_stack.url}/sessions/{session.pk}/")
    box = page.locator("#chart-loss").bounding_box()
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] * 0.4, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.6, y, steps=5)
    page.mouse.up()
    page.wait_for_function("document.querySelector('#zoom-from').value !== ''")
    first = int(page.input_value("#zoom-from"))
    last = int(page.input_value("#zoom-to"))
    assert 1 < first < last < 200
    counts = page.evaluate("window.mltrack.charts[0].pointCounts()")
    assert counts == [last - first + 1, last - first + 1]
    assert page.console_problems == []


def test_the_session_page_shows_the_report_controls_and_exports(
    live_stack, page, alice
):
    session = _finished_session(alice, 50)
    login(page, live_stack.url, "alice", "alice-password-1")
    _open(page, f"{live_stack.url}/sessions/{session.pk}/")
    assert "versicolor" in page.text_content("table.confusion")
    assert page.locator("table.per-class tbody tr").count() == 3
    # Smoothing changes the drawn values but never the number of points.
    before = page.evaluate("window.mltrack.charts[0].chart.data.datasets[0].data[10].y")
    page.locator('figure[data-chart="loss"] .smoothing').fill("0.9")
    after = page.evaluate("window.mltrack.charts[0].chart.data.datasets[0].data[10].y")
    assert after != before
    page.locator('figure[data-chart="loss"] .log-scale').check()
    assert (
        page.evaluate("window.mltrack.charts[0].chart.options.scales.y.type")
        == "logarithmic"
    )
    page.locator('figure[data-chart="loss"] .x-axis').select_option("time")
    assert (
        page.evaluate("window.mltrack.charts[0].chart.options.scales.x.title.text")
        == "elapsed seconds"
    )
    with page.expect_download() as png:
        page.locator('figure[data-chart="accuracy"] .png').click()
    assert png.value.suggested_filename == f"session-{session.pk}-accuracy.png"
    with open(png.value.path(), "rb") as image:
        assert image.read(8) == b"\x89PNG\r\n\x1a\n"
    with page.expect_download() as csv:
        page.click("text=Export CSV")
    with open(csv.value.path()) as exported:
        lines = exported.read().splitlines()
    assert len(lines) == 51 and lines[0].startswith("epoch,train_loss,val_loss")
    assert page.console_problems == []


def test_compare_overlays_two_sessions_and_highlights_differences(
    live_stack, page, alice
):
    first = _finished_session(alice, 30)
    second = _finished_session(alice, 40, model_type="mlp")
    login(page, live_stack.url, "alice", "alice-password-1")
    page.goto(f"{live_stack.url}/?tab=training")
    page.check(f'#history-rows input[value="{first.pk}"]')
    page.check(f'#history-rows input[value="{second.pk}"]')
    page.click("text=Compare selected")
    page.wait_for_function("window.mltrack && window.mltrack.charts.length === 4")
    counts = page.evaluate("window.mltrack.charts.map((c) => c.pointCounts())")
    # Newest first, as in the history table.
    assert counts == [[40, 30]] * 4
    differing = page.locator("table.compare-params tr.differs th").all_text_contents()
    assert any("model" in name for name in differing)
    assert any("epochs" in name for name in differing)
    same = page.locator("table.compare-params tr:not(.differs) th").all_text_contents()
    assert any("data set" in name for name in same)
    assert page.console_problems == []


def test_compare_names_an_unknown_session(live_stack, page, alice):
    login(page, live_stack.url, "alice", "alice-password-1")
    page.goto(f"{live_stack.url}/sessions/compare/?ids=424242")
    assert page.text_content("#compare-error") == "No session #424242."


@pytest.mark.parametrize(
    "path",
    [
        "/?tab=training",
        "/?tab=models",
        "/sessions/{pk}/",
        "/sessions/compare/?ids={pk}",
    ],
    ids=["training-tab", "models-tab", "session-page", "compare-page"],
)
def test_pages_fit_a_phone_screen(live_stack, page, alice, path):
    session = _finished_session(alice, 20)
    login(page, live_stack.url, "alice", "alice-password-1")
    page.set_viewport_size({"width": 375, "height": 800})
    page.goto(live_stack.url + path.format(pk=session.pk))
    page.wait_for_load_state("networkidle")
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 375, f"{path} is {width}px wide"
    assert page.console_problems == []


def test_the_session_page_is_keyboard_reachable(live_stack, page, alice):
    session = _finished_session(alice, 20)
    login(page, live_stack.url, "alice", "alice-password-1")
    _open(page, f"{live_stack.url}/sessions/{session.pk}/")
    reached = set()
    for _ in range(60):
        page.keyboard.press("Tab")
        reached.add(
            page.evaluate(
                "(document.activeElement.id || document.activeElement.className"
                " || document.activeElement.textContent).trim()"
            )
        )
    for control in ("zoom-from", "zoom-to", "zoom-reset", "smoothing", "secondary png"):
        assert control in reached, (control, reached)


CHART_EPOCHS = (
    "window.mltrack.charts.map((c) => c.chart.data.datasets"
    ".filter((d) => !d.raw).map((d) => d.data.map((p) => p.x)))"
)


def _trained(epochs):
    from django.utils.timezone import now

    return [
        (
            epoch,
            {
                "train_loss": 1 / epoch,
                "val_loss": 1.1 / epoch,
                "train_accuracy": epoch / 10,
                "val_accuracy": epoch / 10,
                "learning_rate": 0.01,
                "precision": 0.8,
                "recall": 0.7,
                "f1": 0.75,
            },
            0.01,
            now(),
        )
        for epoch in epochs
    ]


def _chart_epochs(page) -> set[tuple[int, ...]]:
    return {tuple(xs) for chart in page.evaluate(CHART_EPOCHS) for xs in chart}


def _watch_running_run(live_stack, page, alice, path):
    """A running session with epochs 1-3 saved, open at `path`; returns it and
    the times at which the page asked the API for epochs after a cursor."""
    session = TrainingSession.objects.create(
        owner=alice, model_type="logistic", dataset="iris", total_epochs=10
    )
    session.mark_running("t")
    session.record_trained(_trained([1, 2, 3]))
    login(page, live_stack.url, "alice", "alice-password-1")
    fetches: list[float] = []
    page.on(
        "request",
        lambda r: fetches.append(time.monotonic()) if "after=" in r.url else None,
    )
    page.goto(live_stack.url + path.format(pk=session.pk))
    page.wait_for_selector("#connection[data-state=live]", state="attached")
    page.wait_for_function(f"{CHART_EPOCHS}.flat().every((xs) => xs.length === 3)")
    return session, fetches


def _push_6_and_7_unsaved(page, session, fetches) -> list[float]:
    """What a page that opened after the worker pushed 4 and 5, none of 4-7
    saved yet, hears next; returns the page's fetches from then on, once it has
    asked three times (a gap it cannot fill: it keeps asking)."""
    from sessions import events

    later = _trained([4, 5, 6, 7])
    session.count_trained(later)
    fetched_before = len(fetches)
    events.push_trained(session, later[2:], [{}, {}])
    deadline = time.monotonic() + 10
    while len(fetches) < fetched_before + 3 and time.monotonic() < deadline:
        page.wait_for_timeout(100)  # Playwright hands over the page's requests
    assert len(fetches) >= fetched_before + 3, fetches
    return fetches[fetched_before:]


@pytest.mark.parametrize("path", ["/sessions/{pk}/", "/?tab=training"])
def test_epochs_heard_before_they_are_saved_are_drawn_once_saved(
    live_stack, page, alice, path
):
    """The worker pushes epochs at once and saves them a fraction of a second
    later (sessions/tasks.py): a page that opened in between hears of epochs
    after a gap it cannot fill yet. It keeps them, tries again, and draws every
    epoch once when they are saved."""
    from sessions import events

    session, fetches = _watch_running_run(live_stack, page, alice, path)
    _push_6_and_7_unsaved(page, session, fetches)
    assert _chart_epochs(page) == {(1, 2, 3)}  # 6 and 7 wait for 4 and 5

    session.record_trained(_trained([4, 5, 6, 7]))  # the worker's save
    # Within the page's retries, not its check after 15 s without events.
    page.wait_for_function(
        f"{CHART_EPOCHS}.flat().every((xs) => xs.length === 7)", timeout=10_000
    )
    assert _chart_epochs(page) == {(1, 2, 3, 4, 5, 6, 7)}
    asked = len(fetches)
    page.wait_for_timeout(1000)  # no more backfills once nothing waits
    assert len(fetches) == asked

    # The last epoch's event lost (a full channel, a reconnect): the final
    # status says how far the run got, and the page fetches the rest.
    session.record_trained(_trained([8]))
    session.mark_completed({"totalSeconds": 1.0})
    events.push_status(session)
    page.wait_for_function(
        f"{CHART_EPOCHS}.flat().every((xs) => xs.length === 8)", timeout=10_000
    )
    assert _chart_epochs(page) == {tuple(range(1, 9))}
    assert page.console_problems == []


@pytest.mark.parametrize("path", ["/sessions/{pk}/", "/?tab=training"])
def test_a_run_that_ends_with_epochs_never_saved_stops_the_backfills(
    live_stack, page, alice, path
):
    """A worker that died between a push and its save: the epochs the page held
    will never be readable. Its retries back off, and the run's final status
    ends them; the charts keep what the database has."""
    from sessions import events

    session, fetches = _watch_running_run(live_stack, page, alice, path)
    retries = _push_6_and_7_unsaved(page, session, fetches)
    # Each retry waits longer than the one before.
    assert retries[2] - retries[1] > retries[1] - retries[0]

    session.refresh_from_db()  # the database's counters: epoch 3
    session.mark_failed("Worker lost: no heartbeat")
    events.push_status(session)
    page.wait_for_timeout(300)  # the final status's own backfill
    asked = len(fetches)
    page.wait_for_timeout(6000)  # longer than the longest retry wait
    assert len(fetches) == asked
    assert _chart_epochs(page) == {(1, 2, 3)}
    assert page.console_problems == []
