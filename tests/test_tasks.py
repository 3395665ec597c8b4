"""run_training in-process, on the real database and the real Redis."""

import io
import json
import subprocess
import sys
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils.timezone import now

from sessions import catalog
from sessions.models import TrainingSession
from sessions.tasks import (
    EPOCH_SAVE_SECONDS,
    PUSH_BATCH_SECONDS,
    _EpochSaver,
    run_training,
)
from sessions.training import EpochResult
from tests.integration.engine_workers import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def test_it_trains_saves_every_epoch_and_pushes_events(make_session, event_tap):
    session = make_session(total_epochs=4)

    summary = run_training(session.pk)

    session.refresh_from_db()
    assert session.status == TrainingSession.Status.COMPLETED, session.error
    assert "completed after 4 epochs" in summary
    assert list(session.epochs.values_list("epoch", flat=True)) == [1, 2, 3, 4]
    # The counters the worker writes less often than every epoch are all there
    # by the final status.
    last = session.epochs.get(epoch=4)
    assert session.final_metrics == last.metrics
    assert session.heartbeat_at >= last.created
    assert session.report["confusionMatrix"]
    received = event_tap.until("training_completed")
    assert [e["type"] for e in received] == (
        ["training_started"] + ["training_progress"] * 4 + ["training_completed"]
    )
    assert [e["epoch"] for e in received[1:5]] == [1, 2, 3, 4]
    assert received[2]["stats"]["etaSeconds"] is not None
    assert received[-1]["session"]["progress"] == 100.0


class _Clock:
    """A monotonic clock the test moves: how fast the epochs come."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _train(saver, clock, epochs, seconds_each):
    for epoch in epochs:
        clock.now += seconds_each
        metrics = {"train_loss": 1 / epoch, "val_accuracy": epoch / 10}
        saver.add(EpochResult(epoch, metrics, seconds_each), {"mark": epoch})


def _stored_progress_epochs(session):
    from sessions import events

    events._writer().flush()  # what the writer was given is in the table
    return [
        event.data["epoch"] for event in session.events.filter(type="training_progress")
    ]


def test_fast_epochs_are_pushed_a_few_at_a_time_and_saved_less_often(
    make_session, event_tap
):
    session = make_session(total_epochs=12)
    session.mark_running("task-1")
    clock = _Clock()
    saver = _EpochSaver(session, clock=clock)
    fast = PUSH_BATCH_SECONDS * 0.3
    # The first pushed and saved at once; then all that fit in
    # PUSH_BATCH_SECONDS wait for the one that would not: 2-5 (epoch 6 would
    # end past 2's wait).
    _train(saver, clock, range(1, 6), fast)
    received = [event_tap.next() for _ in range(5)]
    assert [e["epoch"] for e in received] == [1, 2, 3, 4, 5]
    assert received[-1]["session"]["currentEpoch"] == 5
    # Viewers have 2-5; the database gets them within EPOCH_SAVE_SECONDS, and
    # the event table after it.
    assert list(session.epochs.values_list("epoch", flat=True)) == [1]
    assert _stored_progress_epochs(session) == [1]
    # An epoch that ends as long after 5 as EPOCH_SAVE_SECONDS: pushed, and 2-6
    # saved (waiting for 7 would keep 2 unsaved too long).
    _train(saver, clock, [6], EPOCH_SAVE_SECONDS)
    assert event_tap.next()["epoch"] == 6
    assert session.epochs.count() == 6
    assert _stored_progress_epochs(session) == [1, 2, 3, 4, 5, 6]
    _train(saver, clock, [7, 8], fast)
    assert session.epochs.count() == 6  # 7 and 8 wait for the next
    saver.flush()  # what the task does before the final status
    assert session.epochs.count() == 8
    assert _stored_progress_epochs(session) == list(range(1, 9))
    # Epochs of 0.6 EPOCH_SAVE_SECONDS: each pushed as it ends, saved in pairs.
    _train(saver, clock, [9], EPOCH_SAVE_SECONDS * 0.6)
    assert session.epochs.count() == 8
    _train(saver, clock, [10], EPOCH_SAVE_SECONDS * 0.6)
    assert session.epochs.count() == 10
    # Slower than EPOCH_SAVE_SECONDS: saved as each ends.
    _train(saver, clock, [11], EPOCH_SAVE_SECONDS * 1.5)
    assert session.epochs.count() == 11

    received += [event_tap.next() for _ in range(5)]
    received.insert(5, {"epoch": 6, "stats": {"mark": 6}})
    # Every epoch has its own event, in order, with its own stats and time...
    assert [e["epoch"] for e in received] == list(range(1, 12))
    assert [e["stats"]["mark"] for e in received] == list(range(1, 12))
    rows = {row.epoch: row for row in session.epochs.all()}
    assert [e["savedAt"] for e in received if "savedAt" in e] == [
        rows[epoch].created.timestamp() for epoch in range(1, 12) if epoch != 6
    ]
    # ...but one message carried each push's events: 1, 2-5, 6, 7-8, 9, 10, 11.
    assert event_tap.messages == 7
    session.save_progress()  # the counters the saves kept back
    session.refresh_from_db()
    assert session.current_epoch == 11 and session.best_val_accuracy == 1.1


def test_it_does_not_start_a_session_stopped_while_queued(make_session):
    session = make_session()
    session.request_stop()
    assert "not started" in run_training(session.pk)
    assert session.epochs.count() == 0


def test_a_bad_configuration_fails_the_session_with_a_message(make_session):
    session = make_session(model_type="nosuchmodel", params={})
    run_training(session.pk)
    session.refresh_from_db()
    assert session.status == TrainingSession.Status.FAILED
    assert "nosuchmodel" in session.error
    assert "Traceback" in session.traceback


def test_a_redelivered_task_leaves_a_finished_session_alone(make_session):
    failed = make_session()
    failed.mark_running("t")
    failed.record_epoch(1, {"train_loss": 0.5})
    failed.mark_failed("Worker lost: no heartbeat")
    assert "not started: it was failed" in run_training(failed.pk)
    failed.refresh_from_db()
    assert failed.status == TrainingSession.Status.FAILED
    assert failed.epochs.count() == 1


def test_a_diverging_run_fails_with_the_reason(make_session):
    session = make_session(
        model_type="mlp",
        total_epochs=30,
        params=catalog.clean_params(
            "mlp",
            "iris",
            {"solver": "sgd", "activation": "identity", "learning_rate": 10},
        )[0],
    )
    run_training(session.pk)
    session.refresh_from_db()
    assert session.status == TrainingSession.Status.FAILED
    assert "NaN or infinite" in session.error
    assert session.epochs.count() == session.current_epoch < 30


def test_a_plateau_is_flagged_on_the_session_without_stopping_it(
    make_session, event_tap
):
    params, _ = catalog.clean_params("logistic", "iris", {"learning_rate": 1e-6})
    session = make_session(model_type="logistic", total_epochs=8, params=params)
    run_training(session.pk)
    session.refresh_from_db()
    assert session.status == TrainingSession.Status.COMPLETED
    assert [d["kind"] for d in session.diagnostics] == ["plateau"]
    assert session.diagnostics[0]["epoch"] == 6
    progress = [
        e
        for e in event_tap.until("training_completed")
        if e["type"] == "training_progress"
    ]
    assert [bool(e["stats"]["diagnostics"]) for e in progress] == [False] * 5 + [
        True
    ] * 3


def test_lost_sessions_are_failed_and_announced(make_session, event_tap):
    session = make_session()
    session.mark_running("t")
    session.record_epoch(1, {"train_loss": 0.5})
    TrainingSession.objects.filter(pk=session.pk).update(
        heartbeat_at=now() - timedelta(minutes=5)
    )
    alive = make_session()
    alive.mark_running("t2")

    assert f"Failed 1 lost session(s): #{session.pk}" in call_command_output()
    session.refresh_from_db()
    alive.refresh_from_db()
    assert session.status == TrainingSession.Status.FAILED
    assert alive.status == TrainingSession.Status.RUNNING
    event = event_tap.until("training_failed")[-1]
    assert event["session"]["error"].startswith("Worker lost")
    assert "No lost sessions" in call_command_output()


def call_command_output():
    out = io.StringIO()
    call_command("fail_lost_sessions", stdout=out)
    return out.getvalue()


def test_a_long_run_s_chart_is_stored_when_it_finishes(alice):
    from django.core.cache import cache

    from sessions import metrics, tasks
    from sessions.models import StoredChart

    run = TrainingSession.objects.start_external(alice, "long", {}, 1500, "custom")
    run.record_epochs(
        [(e, {"train_loss": 1 / e, "val_loss": 2 / e}, None) for e in range(1, 1501)]
    )
    run.mark_completed({})
    short = TrainingSession.objects.start_external(alice, "short", {}, 10, "custom")
    short.record_epochs([(e, {"train_loss": 1 / e}, None) for e in range(1, 11)])
    short.mark_completed({})

    tasks.store_chart(run.pk)
    tasks.store_chart(short.pk)

    stored = StoredChart.objects.get(session=run)
    cache.clear()
    assert metrics.chart_json(run, max_points=metrics.CHART_MAX_POINTS) == stored.text
    assert len(json.loads(stored.text)["epochs"]) <= metrics.CHART_MAX_POINTS
    # A short run is never thinned, so there is nothing worth storing.
    assert not StoredChart.objects.filter(session=short).exists()


def test_a_worker_gives_each_run_one_blas_thread():
    # What `celery -A mltrack worker` loads, in its order: the package, Django,
    # the task modules (which load NumPy), then a run's libraries. Each run's
    # matrix products must stay on its own thread.
    import os
    import subprocess
    import sys

    code = (
        "import mltrack, django; django.setup()\n"
        "import sessions.tasks, numpy, threadpoolctl\n"
        "from sessions import training; training.import_libraries()\n"
        "numpy.ones((200, 200)) @ numpy.ones((200, 200))\n"
        "print(sorted({p['num_threads'] for p in threadpoolctl.threadpool_info()}))\n"
    )
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
    }
    answer = subprocess.run(
        [sys.executable, "-c", code],
        env={**env, "MLTRACK_WORKER_NICENESS": "0"},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert answer.stdout.strip() == "[1]", answer.stderr


def test_runs_take_turns_in_the_order_they_asked():
    import threading

    from sessions.tasks import TrainingTurns

    turns = TrainingTurns(slots=1)
    order: list[str] = []
    turns.take()  # the first run computes

    def run(name: str) -> None:
        turns.take()
        order.append(name)
        turns.give_back()

    threads = []
    for name in ("second", "third", "fourth"):
        thread = threading.Thread(target=run, args=(name,))
        thread.start()
        threads.append(thread)
        # Each asks only once the one before it waits.
        asked = len(threads)
        wait_for(lambda: len(turns.waiting) == asked, 10, every=0.001)  # noqa: B023
    assert order == []  # nobody computes while the first run has the turn
    turns.give_back()
    for thread in threads:
        thread.join(10)
    assert order == ["second", "third", "fourth"]
    assert turns.free == 1 and not turns.waiting


def test_a_long_epoch_lets_a_waiting_run_have_a_turn_at_its_next_chunk():
    import threading

    from sessions.tasks import TrainingTurns

    turns = TrainingTurns(slots=1, turn_seconds=0.0)
    turns.take()
    turns.pass_if_due()  # nobody waits: the turn is kept
    assert turns.free == 0 and not turns.waiting
    computed = threading.Event()

    def quick_run() -> None:
        turns.take()
        computed.set()
        turns.give_back()

    thread = threading.Thread(target=quick_run)
    thread.start()
    wait_for(lambda: len(turns.waiting) == 1, 10, every=0.001)
    turns.pass_if_due()  # returns once the quick run has had its turn
    assert computed.is_set()
    thread.join(10)
    turns.give_back()
    assert turns.free == 1


def test_a_turn_held_shorter_than_turn_seconds_is_kept():
    import threading

    from sessions.tasks import TrainingTurns

    turns = TrainingTurns(slots=1, turn_seconds=3600)
    turns.take()
    thread = threading.Thread(target=lambda: (turns.take(), turns.give_back()))
    thread.start()
    wait_for(lambda: len(turns.waiting) == 1, 10, every=0.001)
    turns.pass_if_due()
    assert len(turns.waiting) == 1  # still waiting: the turn was kept
    turns.give_back()
    thread.join(10)
    assert turns.free == 1


def test_a_finished_run_gives_the_memory_it_freed_back():
    # glibc keeps freed blocks for reuse, below whatever is still allocated
    # above them: 40 MB freed under one live block stays resident until
    # release_freed_memory(), which the task calls after a run's final status.
    code = (
        "import os, sys, psutil\n"
        "os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'mltrack.settings')\n"
        "import django; django.setup()\n"
        "from sessions.tasks import release_freed_memory\n"
        "rss = lambda: psutil.Process().memory_info().rss / 2**20\n"
        "blocks = [bytearray(1000) for _ in range(40_000)]\n"
        "pin = bytearray(1000)\n"
        "del blocks\n"
        "freed = rss(); release_freed_memory(); print(round(freed - rss()))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert int(result.stdout.strip().splitlines()[-1]) >= 30
