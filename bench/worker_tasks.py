"""A bench-only Celery task: the untracked side of the overhead benchmark, run in
the worker process itself (the bench starts its worker with
`--include bench.worker_tasks`; the app's own workers never load this module).

The tracked run and this fit then share one process, one pool and its threads,
so the only difference between them is the tracking. Run in a separate process
set up as a worker is, the same untracked fit took 2-6 % less than in the
worker (bench/NOTES.md, session 11), and the overhead figure counted that
difference as tracking's.
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis
from celery import shared_task
from django.conf import settings


def fit_timed(
    model_type: str, dataset: str, params: dict[str, Any], epochs: int
) -> dict[str, Any]:
    """training.fit with a callback that only notes the time: the call's wall
    time, this process's CPU seconds during it, and each epoch's end and
    duration (for the time between epochs)."""
    from sessions import training

    ends: list[float] = []
    durations: list[float] = []

    def note(result: training.EpochResult) -> None:
        ends.append(time.time())
        durations.append(result.duration)

    # The whole call, report included: the tracked run's span (start to final
    # status) includes it too.
    began, before = time.monotonic(), time.process_time()
    training.fit(model_type, dataset, params, epochs, on_epoch=note)
    return {
        "wall": time.monotonic() - began,
        "cpu": time.process_time() - before,
        "ends": ends,
        "durations": durations,
    }


@shared_task(name="bench.fit_untracked")
def fit_untracked(
    model_type: str, dataset: str, params: dict[str, Any], epochs: int, reply_to: str
) -> None:
    """fit_timed in the worker; its answer goes to the Redis list `reply_to`
    (the app keeps no task results)."""
    answer = fit_timed(model_type, dataset, params, epochs)
    client = redis.Redis.from_url(settings.REDIS_URL)
    try:
        client.rpush(reply_to, json.dumps(answer))
        client.expire(reply_to, 600)
    finally:
        client.close()
