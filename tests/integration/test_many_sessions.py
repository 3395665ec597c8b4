"""Fifty sessions queued at once by one user on two workers with four processes:
the cap on concurrent runs holds, every session finishes, none is lost."""

import time

import pytest

from sessions.models import ApiToken, TrainingSession
from tests.conftest import REDIS_URL, Stack
from tests.conftest import call_api as call

pytestmark = pytest.mark.django_db(transaction=True)


def most_at_once(intervals):
    """The largest number of [start, end] intervals that overlap at one moment."""
    moments = sorted(
        [(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals]
    )
    running = peak = 0
    for _, step in moments:  # an end sorts before a start at the same moment
        running += step
        peak = max(peak, running)
    return peak


def test_fifty_queued_sessions_all_finish_under_the_cap(tmp_path, alice):
    crowded = Stack(REDIS_URL, tmp_path)
    crowded.env.update(MLTRACK_MAX_CONCURRENT_RUNS="2", MLTRACK_QUEUE_RETRY_SECONDS="1")
    crowded.start_worker("first")
    crowded.start_worker("second")
    crowded.start_daphne()
    try:
        _, token = ApiToken.issue(alice)
        body = {"modelType": "logistic", "dataset": "iris", "epochs": 5}
        ids = [
            call(crowded, "POST", "/api/ml/start-training", token, body)["session"][
                "id"
            ]
            for _ in range(50)
        ]
        peak_seen = 0
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            sessions = TrainingSession.objects.filter(pk__in=ids)
            running = sessions.filter(status__in=("running", "stopping")).count()
            peak_seen = max(peak_seen, running)
            if not sessions.active().exists():
                break
            time.sleep(0.1)  # poll the real state
    finally:
        crowded.stop()
    sessions = list(TrainingSession.objects.filter(pk__in=ids))
    assert len(sessions) == 50
    assert {s.status for s in sessions} == {"completed"}
    assert all(s.epochs.count() == 5 for s in sessions)
    assert peak_seen <= 2
    assert most_at_once([(s.started_at, s.finished_at) for s in sessions]) <= 2
    print(f"\nFIFTY SESSIONS: at most {peak_seen} running at once (cap 2)")
