"""Runs of one worker process take turns at computing (sessions.tasks.TrainingTurns),
on a real Celery worker with a threads pool: with one turn, no two epochs were ever
computed at the same moment, yet both runs progressed together."""

from datetime import timedelta

import pytest

from sessions import catalog
from sessions.models import TrainingSession
from sessions.tasks import run_training
from tests.integration.engine_workers import Worker, new_queue, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

EPOCHS = 40


def _train_two_runs_at_once(make_session, tmp_path, slots: int) -> list[list]:
    queue = new_queue()
    worker = Worker(
        queue,
        tmp_path / "worker.log",
        pool="threads",
        concurrency=2,
        MLTRACK_WORKER_TRAINING_SLOTS=str(slots),
        MLTRACK_MAX_CONCURRENT_RUNS="2",
    ).wait_ready()
    try:
        params, errors = catalog.clean_params("logistic", "iris", {})
        assert errors == {}
        sessions = [
            make_session(
                model_type="logistic",
                dataset="iris",
                total_epochs=EPOCHS,
                params=params,
            )
            for _ in range(2)
        ]
        for session in sessions:
            run_training.apply_async((session.pk,), queue=queue)

        def finished() -> bool:
            return all(
                TrainingSession.objects.get(pk=s.pk).status
                == TrainingSession.Status.COMPLETED
                for s in sessions
            )

        wait_for(finished, 120)
    finally:
        worker.stop()
    # Each epoch's computing: from its end (stamped before its save) back by its
    # duration.
    return [
        [
            (row.created - timedelta(seconds=row.duration), row.created)
            for row in session.epochs.order_by("epoch")
        ]
        for session in sessions
    ]


def _overlaps(first: list, second: list) -> int:
    return sum(1 for a0, a1 in first for b0, b1 in second if a0 < b1 and b0 < a1)


def test_with_one_turn_two_runs_progress_together_but_never_compute_at_once(
    make_session, tmp_path
):
    first, second = _train_two_runs_at_once(make_session, tmp_path, slots=1)
    assert len(first) == len(second) == EPOCHS
    # Together: each run's epochs ended while the other's were still going on.
    assert second[0][1] < first[-1][1] and first[0][1] < second[-1][1]
    assert _overlaps(first, second) == 0


def test_with_two_turns_two_runs_compute_at_once(make_session, tmp_path):
    first, second = _train_two_runs_at_once(make_session, tmp_path, slots=2)
    assert _overlaps(first, second) > 0
