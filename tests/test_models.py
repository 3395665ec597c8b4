import pytest
from django.db import IntegrityError

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
    session.record_epoch(1, {"train_loss": 0.5})
    with pytest.raises(IntegrityError):
        session.record_epoch(1, {"train_loss": 0.4})


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
