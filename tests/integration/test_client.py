"""The Python client against real servers: daphne and a Celery worker as processes,
the test database, Redis. The outage test runs its own daphne so it can stop and
restart it on the same port in the middle of a run."""

import json
import subprocess
import sys
import time
import urllib.request

import pytest

from sessions.models import ApiToken, EpochMetric, TrainingSession
from tests.conftest import REDIS_URL, ROOT, Stack

sys.path.insert(0, str(ROOT / "client"))
from mltrack_client import Run  # noqa: E402

pytestmark = pytest.mark.django_db(transaction=True)


def wait_for(condition, what, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def logged_epochs(session_id):
    return list(
        EpochMetric.objects.filter(session_id=session_id)
        .order_by("epoch")
        .values_list("epoch", flat=True)
    )


def test_the_example_trains_a_real_model_and_logs_every_epoch(live_stack, alice):
    _, token = ApiToken.issue(alice)
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "train_sgd.py"),
            "--url",
            live_stack.url,
            "--token",
            token,
            "--epochs",
            "15",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    session = TrainingSession.objects.get(owner=alice, model_type="external")
    assert session.status == "completed" and session.dataset == "digits"
    assert logged_epochs(session.pk) == list(range(1, 16))
    last = EpochMetric.objects.get(session=session, epoch=15)
    assert last.val_accuracy > 0.85 and last.train_loss < 1
    assert last.extra["epoch_seconds"] > 0
    print(f"\nEXAMPLE: {result.stdout.strip()}; val_accuracy {last.val_accuracy:.3f}")


def test_a_script_that_raises_marks_the_run_failed(live_stack, alice):
    _, token = ApiToken.issue(alice)
    with pytest.raises(RuntimeError):
        with Run(live_stack.url, token, name="diverges") as run:
            for step in range(1, 6):
                run.log(step, train_loss=1.0 / step)
            raise RuntimeError("loss diverged")
    session = TrainingSession.objects.get(pk=run.session_id)
    assert session.status == "failed"
    assert "RuntimeError: loss diverged" in session.error
    assert logged_epochs(session.pk) == [1, 2, 3, 4, 5]


def test_the_stop_button_reaches_the_script(live_stack, alice):
    _, token = ApiToken.issue(alice)
    with Run(live_stack.url, token, name="stoppable", heartbeat_interval=0.2) as run:
        step = 0
        stopped_at = None
        while step < 100_000:
            step += 1
            run.log(step, train_loss=1.0 / step)
            time.sleep(0.01)
            if step == 20:
                wait_for(lambda: run.session_id is not None, "the run to exist")
                request = urllib.request.Request(
                    f"{live_stack.url}/api/ml/stop-training/{run.session_id}",
                    method="POST",
                    headers={"Authorization": f"Bearer {token}"},
                )
                urllib.request.urlopen(request, timeout=30).close()
            if run.should_stop:
                stopped_at = step
                break
    assert stopped_at is not None and stopped_at >= 20
    session = TrainingSession.objects.get(pk=run.session_id)
    assert session.status == "stopped"
    assert logged_epochs(session.pk) == list(range(1, stopped_at + 1))


def test_nan_values_are_dropped_but_the_rest_of_the_step_is_kept(live_stack, alice):
    _, token = ApiToken.issue(alice)
    with Run(live_stack.url, token, name="nan") as run:
        run.log(1, train_loss=float("nan"), val_accuracy=0.5)
        run.log(2, train_loss=float("inf"))  # nothing finite: not sent
        run.log(3, train_loss=0.3)
    assert logged_epochs(run.session_id) == [1, 3]
    row = EpochMetric.objects.get(session_id=run.session_id, epoch=1)
    assert row.train_loss is None and row.val_accuracy == 0.5


def test_every_point_arrives_after_a_server_outage(alice, tmp_path):
    """Stop daphne in the middle of a run, keep logging, start it again on the same
    port: the client keeps the points and sends them all once it is back."""
    _, token = ApiToken.issue(alice)
    own = Stack(REDIS_URL, tmp_path)
    own.start_daphne()
    try:
        run = Run(
            own.url,
            token,
            name="outage",
            total_epochs=300,
            flush_interval=0.1,
            heartbeat_interval=0.5,
            max_backoff=1.0,
            timeout=2.0,
        )
        slowest_log = 0.0

        def log(step):
            nonlocal slowest_log
            started = time.perf_counter()
            run.log(step, train_loss=1.0 / step, val_accuracy=step / 300)
            slowest_log = max(slowest_log, time.perf_counter() - started)

        for step in range(1, 101):
            log(step)
        wait_for(lambda: run.sent == 100, "the first 100 points to arrive")

        own.stop()
        for step in range(101, 201):
            log(step)
            time.sleep(0.01)
        time.sleep(1.5)  # let the client fail a few times against the closed port
        assert run.pending == 100 and run.sent == 100
        assert logged_epochs(run.session_id) == list(range(1, 101))

        own.start_daphne()  # the same port
        for step in range(201, 301):
            log(step)
        run.finish("completed")
    finally:
        own.stop()
    assert run.error is None and run.pending == 0
    assert logged_epochs(run.session_id) == list(range(1, 301))
    session = TrainingSession.objects.get(pk=run.session_id)
    assert session.status == "completed" and session.current_epoch == 300
    print(f"\nOUTAGE: 300/300 points arrived; slowest log() {slowest_log * 1e3:.2f} ms")


def test_it_keeps_points_logged_before_the_server_ever_answered(alice, tmp_path):
    _, token = ApiToken.issue(alice)
    own = Stack(REDIS_URL, tmp_path)  # its port is chosen, nothing listens yet
    run = Run(own.url, token, name="late server", flush_interval=0.1, max_backoff=0.5)
    for step in range(1, 51):
        run.log(step, train_loss=1.0 / step)
    time.sleep(1)
    assert run.session_id is None and run.pending == 50
    own.start_daphne()
    try:
        run.finish("completed")
    finally:
        own.stop()
    assert logged_epochs(run.session_id) == list(range(1, 51))
    body = json.dumps(TrainingSession.objects.get(pk=run.session_id).as_dict())
    assert '"status": "completed"' in body


def test_a_long_logged_run_s_chart_is_stored_by_the_worker_when_it_ends(
    live_stack, alice
):
    from sessions.models import StoredChart

    _, token = ApiToken.issue(alice)
    with Run(live_stack.url, token, name="long") as run:
        for step in range(1, 1201):
            run.log(step, train_loss=1.0 / step)
    session = TrainingSession.objects.get(owner=alice, name="long")
    assert session.status == "completed"
    wait_for(
        lambda: StoredChart.objects.filter(session=session).exists(),
        "the worker to store the finished run's chart",
    )
    chart = json.loads(StoredChart.objects.get(session=session).text)
    assert chart["count"] == 1200 and len(chart["epochs"]) <= 1000
