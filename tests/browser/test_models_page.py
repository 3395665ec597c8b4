"""The Models page in headless Chromium against daphne and a real worker: the
custom-run form, the live Training Visualization tab and Stop."""

from __future__ import annotations

import threading
import time

import pytest

from sessions import events
from sessions.models import TrainingSession
from tests.conftest import login

pytestmark = pytest.mark.django_db(transaction=True)


def wait_until(condition, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


PROGRESS_DONE = (
    "Number(document.querySelector('#focus-progress').getAttribute('aria-valuenow'))"
    " >= 100"
)


def test_the_custom_form_starts_a_run_that_reaches_100_percent(live_stack, page, alice):
    login(page, live_stack.url, "alice", "alice-password-1")
    page.goto(f"{live_stack.url}/?tab=models")
    page.select_option("#id_modelType", "logistic")
    page.select_option("#id_dataset", "iris")
    page.fill("#id_epochs", "15")
    # Only the chosen model's parameters are on show.
    assert page.is_visible("#param-logistic-learning_rate")
    assert not page.is_visible("#param-mlp-learning_rate")
    page.fill("#param-logistic-learning_rate", "0.05")
    page.select_option("#param-logistic-schedule", "cosine")
    page.click("#custom-run button[type=submit]")
    page.wait_for_selector('#connection[data-state="live"]')
    page.wait_for_function(PROGRESS_DONE, timeout=120_000)
    assert page.text_content("#focus-epoch") == "Epoch 15/15"
    # 100% can show a moment before the worker's "completed" arrives.
    page.wait_for_selector("#focus-status.status-completed")
    # A page that opened after epochs were pushed but before they were saved
    # fills its charts from the API, which may answer after "completed" shows.
    page.wait_for_function(
        "window.mltrack.charts.every((c) => c.pointCounts().every((n) => n >= 15))"
    )
    counts = page.evaluate("window.mltrack.charts.map((c) => c.pointCounts())")
    assert counts == [[15, 15], [15, 15]]
    session = TrainingSession.objects.get()
    assert session.params["learning_rate"] == 0.05
    assert session.params["schedule"] == "cosine"
    assert page.console_problems == []


def test_a_slow_answer_does_not_take_a_finished_run_back(live_stack, page, alice):
    # The page asks for the session when a run starts; an answer that arrives
    # after the run's final event is older than what the page shows.
    held = []

    def hold_the_first(route):
        if held:
            route.continue_()
        else:
            held.append((route, route.fetch()))

    page.route("**/api/ml/training-session/*", hold_the_first)
    login(page, live_stack.url, "alice", "alice-password-1")
    page.goto(f"{live_stack.url}/?tab=models")
    page.select_option("#id_modelType", "logistic")
    page.select_option("#id_dataset", "iris")
    page.fill("#id_epochs", "300")
    page.click("#custom-run button[type=submit]")
    page.wait_for_selector("#focus-status.status-completed", timeout=120_000)
    assert page.text_content("#focus-epoch") == "Epoch 300/300"
    route, answer = held[0]
    stale = answer.json()["session"]
    assert stale["status"] == "running" and stale["currentEpoch"] < 300, stale
    with page.expect_response("**/api/ml/training-session/*"):
        route.fulfill(response=answer)
    # Let the page's handler of that answer run.
    page.evaluate("() => new Promise((done) => setTimeout(done, 200))")
    assert page.text_content("#focus-epoch") == "Epoch 300/300"
    assert page.is_visible("#focus-status.status-completed")
    assert page.console_problems == []


def test_the_custom_form_shows_errors_next_to_their_fields(live_stack, page, alice):
    login(page, live_stack.url, "alice", "alice-password-1")
    page.goto(f"{live_stack.url}/?tab=models")
    page.select_option("#id_modelType", "mlp")
    page.fill("#id_epochs", "0")
    page.fill("#param-mlp-learning_rate", "20")
    page.fill("#param-mlp-hidden_layer_sizes", "64,x")
    page.click("#custom-run button[type=submit]")
    page.wait_for_selector("#form-errors")
    assert page.text_content("#error-epochs") == "epochs must be at least 1"
    assert (
        page.text_content("#error-param-mlp-learning_rate")
        == "learning_rate must be at most 10"
    )
    assert "layer sizes" in page.text_content("#error-param-mlp-hidden_layer_sizes")
    # The form keeps what was typed, so only the mistakes need fixing.
    assert page.input_value("#param-mlp-hidden_layer_sizes") == "64,x"
    assert page.input_value("#id_modelType") == "mlp"
    assert TrainingSession.objects.count() == 0


def test_stop_shows_stopping_then_stopped(live_stack, page, alice):
    login(page, live_stack.url, "alice", "alice-password-1")
    page.goto(f"{live_stack.url}/?tab=models")
    page.select_option("#id_modelType", "logistic")
    page.select_option("#id_dataset", "synthetic")
    page.fill("#param-synthetic-samples", "20000")
    page.fill("#id_epochs", "5000")
    page.click("#custom-run button[type=submit]")
    page.wait_for_function(
        "document.querySelector('#focus-status').textContent === 'running'"
        " && window.mltrack && window.mltrack.store().last >= 2",
        timeout=120_000,
    )
    session = TrainingSession.objects.get()
    # Badges name each diagnostic (this noisy run plateaus), never "[object Object]".
    assert "[object" not in page.text_content("#active-sessions")
    # The run sends many events a second: the button must survive them to be clicked.
    stop = page.locator(f'#active-sessions li[data-session="{session.pk}"] button')
    stop.click()
    page.wait_for_selector("#focus-status.status-stopped", timeout=60_000)
    assert page.text_content("#focus-status") == "stopped"
    assert page.text_content("#active-sessions") == "Nothing is training."
    row = page.locator(f'#history-rows tr[data-session="{session.pk}"]')
    assert "stopped" in row.text_content()
    session.refresh_from_db()
    assert session.status == "stopped" and session.current_epoch < 5000
    assert page.console_problems == []


def test_stop_button_says_stopping_until_the_worker_confirms(live_stack, page, alice):
    login(page, live_stack.url, "alice", "alice-password-1")
    # A queued session no worker will take: it stays "stopping" only if running,
    # so make it look running to the page, as a busy worker's session would.
    session = TrainingSession.objects.create(
        owner=alice, model_type="logistic", dataset="iris", total_epochs=10
    )
    session.mark_running("elsewhere")
    page.goto(f"{live_stack.url}/?tab=training")
    button = page.locator(f'#active-sessions li[data-session="{session.pk}"] button')
    button.click()
    page.wait_for_function(
        f'document.querySelector(\'#active-sessions li[data-session="{session.pk}"]'
        " button').textContent === 'stopping...'"
    )
    assert button.is_disabled()
    wait_until(lambda: session.current_status() == "stopping")
    page.wait_for_timeout(1500)  # the page keeps waiting for the worker
    assert button.text_content() == "stopping..."
    # The worker confirms: the session leaves the active list.
    session.mark_stopped()
    # As the worker does; from another thread, since Playwright owns this one's loop.
    pusher = threading.Thread(target=events.push_status, args=(session,))
    pusher.start()
    pusher.join()
    page.wait_for_selector("#active-sessions li.empty")
    assert page.console_problems == []


def test_paused_updates_wait_until_resumed(live_stack, page, alice):
    login(page, live_stack.url, "alice", "alice-password-1")
    page.wait_for_selector('#connection[data-state="live"]')
    page.click("#live-toggle")
    assert page.get_attribute("#live-toggle", "aria-pressed") == "false"
    session = TrainingSession.objects.create(
        owner=alice, model_type="mlp", dataset="iris", total_epochs=10
    )
    session.mark_running("elsewhere")
    pusher = threading.Thread(
        target=events.push_status, args=(session, "training_started")
    )
    pusher.start()
    pusher.join()
    page.wait_for_timeout(1500)  # time for the event to arrive and be held back
    assert page.text_content("#active-sessions") == "Nothing is training."
    page.click("#live-toggle")
    page.wait_for_selector(f'#active-sessions li[data-session="{session.pk}"]')
    assert page.console_problems == []


def _csv_file(path) -> str:
    import random

    rng = random.Random(3)
    lines = ["height,weight,colour,kind"]
    for _ in range(120):
        kind = rng.choice(["cat", "dog"])
        base = 30 if kind == "cat" else 60
        lines.append(
            f"{base + rng.random() * 10:.2f},{base / 8 + rng.random():.2f},"
            f"{rng.choice(['black', 'white'])},{kind}"
        )
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_a_csv_upload_trains_on_the_named_column(live_stack, page, alice, tmp_path):
    login(page, live_stack.url, "alice", "alice-password-1")
    page.goto(f"{live_stack.url}/?tab=models")
    page.select_option("#id_modelType", "randomforest")
    page.select_option("#id_dataset", "csv")
    assert page.is_visible("#id_csvFile")
    page.set_input_files("#id_csvFile", _csv_file(tmp_path / "pets.csv"))
    page.fill("#id_targetColumn", "kind")
    page.fill("#id_epochs", "5")
    page.click("#custom-run button[type=submit]")
    page.wait_for_selector("#focus-status.status-completed", timeout=120_000)
    assert page.text_content("#focus-epoch") == "Epoch 5/5"
    session = TrainingSession.objects.get()
    assert session.dataset == "csv"
    assert page.console_problems == []


def test_a_csv_without_its_target_column_is_named_next_to_the_field(
    live_stack, page, alice, tmp_path
):
    login(page, live_stack.url, "alice", "alice-password-1")
    page.goto(f"{live_stack.url}/?tab=models")
    page.select_option("#id_dataset", "csv")
    page.set_input_files("#id_csvFile", _csv_file(tmp_path / "pets.csv"))
    page.fill("#id_targetColumn", "species")
    page.click("#custom-run button[type=submit]")
    page.wait_for_selector("#form-errors")
    message = page.text_content("#error-targetColumn") or page.text_content(
        "#error-csvFile"
    )
    assert "species" in message
    assert TrainingSession.objects.count() == 0
