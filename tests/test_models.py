import threading
from contextlib import contextmanager
from datetime import timedelta

import pytest
from django.db import IntegrityError, connection, connections, transaction
from django.utils.timezone import now

from sessions.models import ApiToken, EpochMetric, TrainingSession

pytestmark = pytest.mark.django_db

Status = TrainingSession.Status


def test_record_epoch_stores_metrics_and_moves_counters(make_session):
    session = make_session(total_epochs=4)
    session.mark_running("task-1")
    session.record_epoch(1, {"train_loss": 0.5, "val_accuracy": 0.8, "custom": 3}, 0.1)
    session.refresh_from_db()
    assert session.current_epoch == 1
    assert session.progress == 25.0
    assert session.best_val_accuracy == 0.8
    row = EpochMetric.objects.get(session=session, epoch=1)
    assert row.metrics["train_loss"] == 0.5 and row.metrics["custom"] == 3
    assert row.metrics["learning_rate"] is None


def test_an_epoch_is_stored_once(make_session):
    session = make_session()
    first = session.record_epoch(1, {"train_loss": 0.5})
    again = session.record_epoch(1, {"train_loss": 0.4})
    # The retry answers with the row as first written.
    assert (
        (again.epoch, again.train_loss) == (first.epoch, first.train_loss) == (1, 0.5)
    )
    assert EpochMetric.objects.get(session=session, epoch=1).train_loss == 0.5
    with pytest.raises(IntegrityError):  # the database itself refuses a duplicate
        EpochMetric.objects.create(session=session, epoch=1)


def test_record_epochs_stores_every_value_in_its_own_column(make_session):
    session = make_session()
    metrics = dict(
        train_loss=1,
        val_loss=2,
        train_accuracy=3,
        val_accuracy=4,
        learning_rate=5,
        precision=6,
        recall=7,
        f1=8,
        custom=9,
    )
    (returned,) = session.record_epochs([(3, metrics, 0.5)])
    row = EpochMetric.objects.get(session=session)
    for stored in (returned, row):
        assert (stored.session_id, stored.epoch, stored.duration) == (
            session.pk,
            3,
            0.5,
        )
        assert stored.metrics == metrics
        assert stored.created == row.created
    assert [row.train_loss, row.f1, row.extra] == [1.0, 8.0, {"custom": 9}]


def test_record_epochs_moves_the_counters_only_for_new_epochs(make_session):
    session = make_session(total_epochs=10)
    session.record_epochs(
        [(1, {"val_accuracy": 0.7}, None), (3, {"train_loss": 0.3, "c": 2}, None)]
    )
    assert (session.current_epoch, session.best_val_accuracy) == (3, 0.7)
    assert session.final_metrics["train_loss"] == 0.3
    assert session.final_metrics["c"] == 2
    # A retried epoch 3 with other values changes nothing; a late epoch 2 raises
    # the best accuracy but not the counter or the last metrics.
    new = session.record_epochs(
        [
            (3, {"train_loss": 9, "val_accuracy": 1.0}, None),
            (2, {"val_accuracy": 0.9}, None),
        ]
    )
    assert [row.epoch for row in new] == [2]
    stored = TrainingSession.objects.get(pk=session.pk)
    for seen in (session, stored):
        assert (seen.current_epoch, seen.best_val_accuracy) == (3, 0.9)
        assert seen.final_metrics["train_loss"] == 0.3
    assert session.heartbeat_at == stored.heartbeat_at is not None


def _columns(instance):
    return {
        f.attname: getattr(instance, f.attname)
        for f in type(instance)._meta.concrete_fields
    }


def test_owned_reads_a_session_as_the_orm_does(make_session, bob):
    session = make_session()
    session.mark_running("task-1")
    session.record_epoch(1, {"train_loss": 0.5, "val_accuracy": 0.8, "custom": 3})
    by_orm = TrainingSession.objects.get(pk=session.pk)
    read = TrainingSession.objects.owned(session.pk, session.owner_id)
    assert _columns(read) == _columns(by_orm)
    assert read.started_at.tzinfo is not None and isinstance(read.params, dict)
    assert TrainingSession.objects.owned(session.pk, bob.pk) is None
    assert TrainingSession.objects.owned(session.pk + 1, session.owner_id) is None


def test_deleting_a_session_deletes_its_epochs(make_session):
    session, other = make_session(), make_session()
    session.record_epoch(1, {"train_loss": 0.5})
    session.record_epochs([(2, {"train_loss": 0.4}, None)])
    other.record_epoch(1, {"train_loss": 0.5})
    session.delete()
    assert list(EpochMetric.objects.values_list("session_id", flat=True)) == [other.pk]


def test_no_epoch_is_stored_for_a_deleted_session(make_session):
    # The table has no foreign-key constraint: each INSERT checks the session.
    session = make_session()
    session.mark_running("t")
    TrainingSession.objects.filter(pk=session.pk).delete()
    with pytest.raises(EpochMetric.DoesNotExist):
        session.record_epoch(1, {"train_loss": 0.5})
    stored = EpochMetric.objects.insert_epochs(
        session.pk, [(2, {"train_loss": 0.4}, None)], now()
    )
    assert stored == set()
    assert not EpochMetric.objects.exists()
    # Last: its failed transaction ends the test's.
    with pytest.raises(TrainingSession.DoesNotExist):
        session.record_epochs([(3, {"train_loss": 0.3}, None)])


@pytest.mark.django_db(transaction=True)
def test_a_deletion_waits_for_epochs_being_inserted(make_session):
    """An INSERT of epochs that has not committed yet when a session is deleted:
    the deletion waits for it and deletes its rows too (PostgreSQL; SQLite's
    writers never overlap)."""
    if connection.vendor != "postgresql":
        pytest.skip("only PostgreSQL runs writers side by side")
    session = make_session()
    session_id = session.pk
    inserting = connections.create_connection("default")
    try:
        inserting.set_autocommit(False)
        with inserting.cursor() as cursor:
            # What record_epochs holds while it inserts: the session row locked.
            cursor.execute(
                "SELECT 1 FROM training_trainingsession WHERE id = %s "
                "FOR NO KEY UPDATE",
                [session_id],
            )

        def delete() -> None:
            try:
                session.delete()
            finally:
                connections.close_all()  # this thread's connection

        deleting = threading.Thread(target=delete)
        deleting.start()
        deleting.join(0.5)
        assert deleting.is_alive()  # waiting for the lock
        with inserting.cursor() as cursor:
            cursor.execute(
                "INSERT INTO training_epochmetric (session_id, epoch, extra, created)"
                " VALUES (%s, 1, '{}', now())",
                [session_id],
            )
        inserting.commit()
        deleting.join(10)
        assert not deleting.is_alive()
    finally:
        inserting.close()
    assert not TrainingSession.objects.filter(pk=session_id).exists()
    assert not EpochMetric.objects.filter(session_id=session_id).exists()


@pytest.mark.django_db(transaction=True)
def test_overlapping_log_batches_store_each_epoch_once(make_session):
    """A batch that waits for another's lock on the session, with epochs the
    other is inserting: it stores only the rest, without an error, and the
    counter ends at the highest (PostgreSQL; SQLite's writers never overlap)."""
    if connection.vendor != "postgresql":
        pytest.skip("only PostgreSQL runs writers side by side")
    session = make_session(total_epochs=30)
    session.record_epochs([(e, {"train_loss": 1.0}, None) for e in range(1, 11)])
    inserted = threading.Event()
    commit = threading.Event()
    results = {}

    def first() -> None:
        try:
            with transaction.atomic():
                mine = TrainingSession.objects.get(pk=session.pk)
                rows = [(e, {"train_loss": 2.0}, None) for e in range(11, 21)]
                results["first"] = [row.epoch for row in mine.record_epochs(rows)]
                inserted.set()
                commit.wait(10)
        finally:
            connections.close_all()

    def second() -> None:
        try:
            mine = TrainingSession.objects.get(pk=session.pk)
            rows = [(e, {"train_loss": 3.0}, None) for e in range(15, 26)]
            results["second"] = [row.epoch for row in mine.record_epochs(rows)]
            results["counter"] = mine.current_epoch
        finally:
            connections.close_all()

    one = threading.Thread(target=first)
    one.start()
    assert inserted.wait(10)
    two = threading.Thread(target=second)
    two.start()
    two.join(0.5)
    assert two.is_alive()  # waiting for the session's lock
    commit.set()
    one.join(10)
    two.join(10)
    assert results["first"] == list(range(11, 21))
    assert results["second"] == list(range(21, 26))
    assert results["counter"] == 25
    stored = dict(
        EpochMetric.objects.filter(session=session).values_list("epoch", "train_loss")
    )
    assert sorted(stored) == list(range(1, 26))
    assert {stored[e] for e in range(15, 21)} == {2.0}
    assert {stored[e] for e in range(21, 26)} == {3.0}


def test_stop_cancels_a_queued_session_at_once(make_session):
    session = make_session()
    assert session.request_stop()
    assert session.status == Status.STOPPED and session.finished_at


def test_stop_asks_a_running_session_to_stop(make_session):
    session = make_session()
    session.mark_running("t")
    assert session.request_stop()
    assert session.status == Status.STOPPING


def test_stop_refuses_a_finished_session(make_session):
    session = make_session()
    session.mark_running("t")
    session.mark_completed({})
    assert not session.request_stop()
    assert session.status == Status.COMPLETED


def test_a_worker_cannot_start_a_session_stopped_while_queued(make_session):
    session = make_session()
    session.request_stop()
    assert not session.mark_running("t")
    assert session.status == Status.STOPPED


def test_for_user_hides_other_users_sessions_but_not_from_staff(
    make_session, bob, staff
):
    mine = make_session()
    assert list(TrainingSession.objects.for_user(bob)) == []
    assert list(TrainingSession.objects.for_user(staff)) == [mine]


def test_tokens_are_stored_hashed_and_revocable(alice):
    token, raw = ApiToken.issue(alice, "laptop")
    assert raw not in token.key_hash and token.key_hash == ApiToken.hash(raw)
    assert ApiToken.objects.authenticate(raw) == token
    assert ApiToken.objects.authenticate(raw + "x") is None
    token.revoke()
    assert ApiToken.objects.authenticate(raw) is None


def test_a_token_and_its_user_are_read_as_the_orm_reads_them(alice):
    token, raw = ApiToken.issue(alice, "laptop")
    found = ApiToken.objects.authenticate(raw)
    by_orm = ApiToken.objects.select_related("user").get(pk=token.pk)
    assert _columns(found) == _columns(by_orm)
    assert _columns(found.user) == _columns(by_orm.user)
    assert found.user.date_joined.tzinfo is not None
    alice.is_active = False
    alice.save()
    assert ApiToken.objects.authenticate(raw) is None


def test_queued_sessions_know_their_place_in_the_queue(make_session):
    first, second, third = make_session(), make_session(), make_session()
    assert [s.as_dict()["queuePosition"] for s in (first, second, third)] == [1, 2, 3]
    first.mark_running("t")
    assert first.as_dict()["queuePosition"] is None
    assert second.queue_position == 1 and third.queue_position == 2


def test_a_session_starts_only_while_a_slot_is_free(make_session):
    running, waiting = make_session(), make_session()
    assert running.start_if_slot_free("t1", max_running=1)
    assert running.status == Status.RUNNING
    assert not waiting.start_if_slot_free("t2", max_running=1)
    assert waiting.status == Status.QUEUED
    # A session asked to stop still holds its slot until its worker lets go.
    running.request_stop()
    assert not waiting.start_if_slot_free("t2", max_running=1)
    running.mark_stopped()
    assert waiting.start_if_slot_free("t2", max_running=1)


def test_a_silent_running_session_is_failed_as_lost_keeping_its_epochs(make_session):
    session = make_session()
    session.mark_running("t")
    session.record_epoch(1, {"train_loss": 0.5})
    TrainingSession.objects.filter(pk=session.pk).update(
        heartbeat_at=now() - timedelta(seconds=45)
    )
    assert list(TrainingSession.objects.lost(timedelta(seconds=30))) == [session]
    assert session.mark_lost(timedelta(seconds=30))
    assert session.status == Status.FAILED and session.error.startswith("Worker lost")
    assert session.epochs.count() == 1 and session.finished_at
    assert not session.mark_lost(timedelta(seconds=30))  # already failed


@pytest.mark.django_db(transaction=True)
def test_a_lost_sessions_counters_come_from_its_stored_epochs(make_session):
    # The worker writes its counters less often than its epochs; one killed
    # in between left them behind the rows.
    session = make_session()
    session.mark_running("t")
    for epoch, accuracy in [(1, 0.5), (2, 0.9), (3, 0.7)]:
        session.record_epoch(epoch, {"val_accuracy": accuracy}, progress_every=60)
    TrainingSession.objects.filter(pk=session.pk).update(
        heartbeat_at=now() - timedelta(seconds=45)
    )
    lost = TrainingSession.objects.get(pk=session.pk)
    assert lost.current_epoch == 1
    assert lost.mark_lost(timedelta(seconds=30))
    assert (lost.current_epoch, lost.best_val_accuracy) == (3, 0.9)
    assert lost.final_metrics == lost.epochs.get(epoch=3).metrics
    assert lost.final_metrics["val_accuracy"] == 0.7


def test_a_session_that_beats_is_not_lost(make_session):
    session = make_session()
    session.mark_running("t")
    session.beat()
    assert not session.mark_lost(timedelta(seconds=30))
    assert session.status == Status.RUNNING


def test_an_epoch_events_session_is_as_dict(make_session):
    session = make_session(total_epochs=4)
    session.mark_running("task-1")
    moved, full = session.as_progress_dict(), session.as_dict()
    # The run's duration is read from the clock at each call (and the first
    # reverse() of a process, in as_dict(), imports the URLconf: ~140 ms).
    assert moved.pop("durationSeconds") <= full.pop("durationSeconds")
    assert moved == full
    session.record_epoch(1, {"train_loss": 0.5, "val_accuracy": 0.8})
    session.set_diagnostics([{"kind": "overfitting", "epoch": 1, "message": "m"}])
    moved, full = session.as_progress_dict(), session.as_dict()
    # The run's duration is read from the clock at each call.
    assert moved.pop("durationSeconds") <= full.pop("durationSeconds")
    assert moved == full
    assert moved["currentEpoch"] == 1 and moved["bestValAccuracy"] == 0.8
    session.mark_completed({"accuracy": 1.0})
    assert session.as_progress_dict() == session.as_dict()


@pytest.mark.django_db(transaction=True)
def test_the_workers_epoch_save_outside_a_transaction(make_session):
    # The worker's own path (no atomic block around it): SQLite's prepared
    # INSERT + UPDATE in one transaction, PostgreSQL's one statement.
    session = make_session(total_epochs=4)
    session.mark_running("task-1")
    moment = now() - timedelta(seconds=3)
    row = session.record_epoch(2, {"val_accuracy": 0.5, "custom": 1}, 0.25, moment)
    again = session.record_epoch(2, {"val_accuracy": 0.9}, 0.5)
    assert (row.epoch, again.val_accuracy, again.duration) == (2, 0.5, 0.25)
    stored = EpochMetric.objects.get(session=session)
    assert stored.created == moment and stored.metrics["custom"] == 1
    session.refresh_from_db()
    assert (session.current_epoch, session.best_val_accuracy) == (2, 0.5)
    assert session.heartbeat_at == moment
    assert session.final_metrics["val_accuracy"] == 0.5


def _three_epochs(moment):
    times = [moment + timedelta(milliseconds=7 * i) for i in range(3)]
    epochs = [
        (1, {"val_accuracy": 0.5}, 0.007, times[0]),
        (2, {"val_accuracy": 0.9, "custom": 2}, 0.007, times[1]),
        (3, {"val_accuracy": 0.7}, None, times[2]),
    ]
    return epochs, times


def _check_three_epochs(session, rows, times):
    assert [epoch for epoch, *_ in rows] == [1, 2, 3]
    stored = list(EpochMetric.objects.filter(session=session).order_by("epoch"))
    # Saved together, each keeps the time it was trained.
    assert [row.created for row in stored] == times
    assert stored[1].metrics["custom"] == 2 and stored[2].duration is None
    session.refresh_from_db()
    assert (session.current_epoch, session.best_val_accuracy) == (3, 0.9)
    assert session.heartbeat_at == times[2]
    assert session.final_metrics["val_accuracy"] == 0.7


@pytest.mark.django_db(transaction=True)
def test_the_worker_saves_a_few_epochs_in_one_statement(make_session):
    session = make_session(total_epochs=5)
    session.mark_running("task-1")
    epochs, times = _three_epochs(now() - timedelta(seconds=3))
    _check_three_epochs(session, session.record_trained(epochs), times)
    # A retried save whose first attempt committed: the rows as first written.
    again = session.record_trained(
        [(2, {"val_accuracy": 0.1}, 0.5, now()), (3, {"val_accuracy": 0.2}, 0.5, now())]
    )
    assert [
        (epoch, metrics["val_accuracy"], duration)
        for epoch, metrics, duration, _ in again
    ] == [(2, 0.9, 0.007), (3, 0.7, None)]
    TrainingSession.objects.filter(pk=session.pk).delete()
    with pytest.raises(EpochMetric.DoesNotExist):
        session.record_trained(
            [(4, {"val_accuracy": 0.1}, 0.5, now()), (5, {}, 0.5, now())]
        )


def test_the_workers_sqlite_insert_names_every_column():
    # It builds its rows without the model (_sqlite_epoch_values): a column
    # added to the model must be added there too.
    from sessions.models import _SQLITE_EPOCH_COLUMNS

    fields = EpochMetric._meta.concrete_fields
    assert set(_SQLITE_EPOCH_COLUMNS) == {f.column for f in fields if not f.primary_key}


def test_a_few_epochs_saved_inside_a_transaction(make_session):
    # The atomic path (a run trained inside a transaction): the same rows.
    session = make_session(total_epochs=5)
    session.mark_running("task-1")
    epochs, times = _three_epochs(now() - timedelta(seconds=3))
    _check_three_epochs(session, session.record_trained(epochs), times)


@pytest.mark.django_db(transaction=True)
def test_the_workers_counters_can_be_written_less_often_than_its_epochs(
    make_session,
):
    session = make_session(total_epochs=4)
    session.mark_running("task-1")
    session.record_epoch(1, {"val_accuracy": 0.5}, progress_every=60)
    session.record_epoch(2, {"val_accuracy": 0.9}, progress_every=60)
    session.record_epoch(3, {"val_accuracy": 0.7}, progress_every=60)
    # Every epoch is stored; the row's counters are those of the first.
    assert list(session.epochs.values_list("epoch", flat=True)) == [1, 2, 3]
    stored = TrainingSession.objects.get(pk=session.pk)
    assert (stored.current_epoch, stored.best_val_accuracy) == (1, 0.5)
    # The instance (and so the epoch's event) has them all.
    assert (session.current_epoch, session.best_val_accuracy) == (3, 0.9)
    assert session.as_progress_dict()["finalMetrics"]["val_accuracy"] == 0.7
    session.save_progress()
    stored.refresh_from_db()
    assert (stored.current_epoch, stored.best_val_accuracy) == (3, 0.9)
    assert stored.final_metrics["val_accuracy"] == 0.7
    assert stored.heartbeat_at == session.heartbeat_at
    # Due again: the counters are written with the epoch.
    session.record_epoch(4, {"val_accuracy": 0.8}, progress_every=0)
    stored.refresh_from_db()
    assert stored.current_epoch == 4


def _running_with_two_epochs_counted_once(make_session):
    """A running session whose row counts its first epoch of two: the worker
    kept the second's counters back (progress_every)."""
    session = make_session(total_epochs=3)
    session.mark_running("task-1")
    session.record_epoch(1, {"val_accuracy": 0.5}, progress_every=60)
    session.record_epoch(2, {"val_accuracy": 0.9}, progress_every=60)
    assert TrainingSession.objects.get(pk=session.pk).current_epoch == 1
    return session


@pytest.mark.django_db(transaction=True)
def test_the_final_status_writes_the_counters_kept_back(make_session):
    session = _running_with_two_epochs_counted_once(make_session)
    assert session.mark_completed({"note": "done"})
    stored = TrainingSession.objects.get(pk=session.pk)
    assert (stored.status, stored.current_epoch, stored.best_val_accuracy) == (
        TrainingSession.Status.COMPLETED,
        2,
        0.9,
    )
    # The instance was refreshed from the row and keeps the counters too.
    assert (session.current_epoch, session.best_val_accuracy) == (2, 0.9)


@pytest.mark.django_db(transaction=True)
def test_the_counters_kept_back_are_written_even_if_the_status_moved(make_session):
    # The run was failed as lost meanwhile: completing it is refused, but the
    # epochs it stored are still counted.
    session = _running_with_two_epochs_counted_once(make_session)
    TrainingSession.objects.filter(pk=session.pk).update(
        status=TrainingSession.Status.FAILED
    )
    assert not session.mark_completed({})
    stored = TrainingSession.objects.get(pk=session.pk)
    assert (stored.status, stored.current_epoch) == (TrainingSession.Status.FAILED, 2)


def _hold_sqlite_write_lock(seconds):
    """Another connection takes SQLite's write lock, commits after `seconds`."""
    import sqlite3
    import threading

    from django.db import connection

    other = sqlite3.connect(
        connection.settings_dict["NAME"], isolation_level=None, check_same_thread=False
    )
    other.execute("BEGIN IMMEDIATE")
    release = threading.Timer(seconds, other.execute, ["COMMIT"])
    release.start()
    return release


@pytest.mark.django_db(transaction=True)
def test_the_workers_epoch_save_waits_for_another_writer(make_session):
    from django.db import connection

    if connection.vendor != "sqlite":
        pytest.skip("SQLite's write lock")
    session = make_session()
    release = _hold_sqlite_write_lock(0.3)
    session.record_epoch(1, {"train_loss": 0.5})  # waits for the COMMIT
    release.join()
    assert EpochMetric.objects.filter(session=session).count() == 1


@contextmanager
def _locked_past_the_busy_timeout():
    """Another connection holds SQLite's write lock for 1 s while this one's busy
    timeout is 0.1 s: a save must fail with "locked" and leave nothing behind."""
    from django.db import OperationalError, connection

    options = connection.settings_dict["OPTIONS"]
    saved_timeout = options["timeout"]
    options["timeout"] = 0.1
    release = _hold_sqlite_write_lock(1.0)
    try:
        yield
    except OperationalError as exc:
        assert "locked" in str(exc)
        raise
    finally:
        options["timeout"] = saved_timeout
        release.join()


@pytest.mark.django_db(transaction=True)
def test_the_workers_epoch_alone_waits_for_another_writer(make_session):
    # An epoch whose counters are kept back is one INSERT in autocommit mode,
    # which takes the write lock as it starts: it waits as BEGIN IMMEDIATE does.
    from django.db import OperationalError, connection

    if connection.vendor != "sqlite":
        pytest.skip("SQLite's write lock")
    session = make_session()
    session.record_epoch(1, {"train_loss": 0.5}, progress_every=60)
    release = _hold_sqlite_write_lock(0.3)
    session.record_epoch(2, {"train_loss": 0.4}, progress_every=60)
    release.join()
    assert EpochMetric.objects.filter(session=session).count() == 2
    with _locked_past_the_busy_timeout(), pytest.raises(OperationalError):
        session.record_epoch(3, {"train_loss": 0.3}, progress_every=60)
    session.record_epoch(3, {"train_loss": 0.3}, progress_every=60)
    assert EpochMetric.objects.filter(session=session).count() == 3


@pytest.mark.django_db(transaction=True)
def test_the_workers_epoch_save_gives_up_after_the_busy_timeout(make_session):
    from django.db import OperationalError, connection

    if connection.vendor != "sqlite":
        pytest.skip("SQLite's write lock")
    session = make_session()
    with _locked_past_the_busy_timeout(), pytest.raises(OperationalError):
        session.record_epoch(1, {"train_loss": 0.5})
    # Nothing was half written, and the connection works again.
    assert not connection.connection.in_transaction
    session.record_epoch(1, {"train_loss": 0.5})
    assert EpochMetric.objects.filter(session=session).count() == 1
