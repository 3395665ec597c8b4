"""The web process's pool of PostgreSQL connections, on a real daphne.

A connection taken by a request must come back to the pool however the request
ends. The one that did not: a client that leaves while its request still runs in
the database, for longer than daphne waits (10 s) before it cancels the request.
Django gives the connection back in request_finished, which a cancelled request
never reaches, so the pool lost one connection each time and, once empty, refused
every request and WebSocket handshake with PoolTimeout.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request

import pytest
import websockets
from django.db import connection, transaction

from sessions.models import ApiToken, TrainingSession
from tests.conftest import REDIS_URL, Stack
from tests.conftest import call_api as call

pytestmark = pytest.mark.django_db(transaction=True)

# What daphne logs when it cancels a request whose client has gone.
CANCELLED = "took too long to shut down and was killed"


@pytest.fixture
def pooled_web(tmp_path):
    if connection.vendor != "postgresql":
        pytest.skip("the connection pool is for PostgreSQL")
    # A pool of one: a single lost connection leaves it empty.
    running = Stack(REDIS_URL, tmp_path)
    running.env.update(DB_POOL="1", DB_POOL_MAX_SIZE="1")
    running.start_daphne()
    yield running
    running.stop()


def _abandoned_log_call(running: Stack, token: str, session_id: int) -> None:
    request = urllib.request.Request(
        f"{running.url}/api/ml/runs/{session_id}/metrics",
        method="POST",
        data=json.dumps({"epochs": [{"epoch": 1, "metrics": {"loss": 0.5}}]}).encode(),
        headers={
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
        },
    )
    with pytest.raises(TimeoutError):
        urllib.request.urlopen(request, timeout=1)


def test_a_request_cancelled_in_the_database_gives_its_connection_back(
    pooled_web, alice
):
    _, token = ApiToken.issue(alice)
    run = TrainingSession.objects.start_external(alice, "pool", {}, 10, "custom")
    with transaction.atomic():
        # Hold the run's row: the log call waits for it inside the database,
        # holding the pool's only connection, until daphne cancels it.
        TrainingSession.objects.select_for_update().get(pk=run.pk)
        _abandoned_log_call(pooled_web, token, run.pk)
        # Daphne cancels again every second until the request ends: the second
        # cancellation is the one that used to lose the connection.
        _wait_for_cancellations(pooled_web, 2)

    # The pool has its connection again: a request and a handshake get one.
    answer = call(pooled_web, "GET", f"/api/ml/training-session/{run.pk}", token)
    assert answer["session"]["currentEpoch"] == 1
    event = asyncio.run(_log_and_watch(pooled_web, token, run.pk, epoch=2))
    assert (event["type"], event["epoch"]) == ("training_progress", 2)


def _wait_for_cancellations(running: Stack, count: int, timeout: float = 60) -> None:
    log = running.log_dir / "daphne.log"
    deadline = time.monotonic() + timeout
    while log.read_text(errors="replace").count(CANCELLED) < count:
        assert time.monotonic() < deadline, f"daphne did not cancel {count} times"
        time.sleep(0.2)


async def _log_and_watch(running: Stack, token: str, session_id: int, epoch: int):
    """Log an epoch while a WebSocket watches the run; the event it gets."""
    url = f"{running.url.replace('http', 'ws')}/ws/training/{session_id}/"
    headers = {"Authorization": f"Bearer {token}"}
    body = {"epochs": [{"epoch": epoch, "metrics": {"loss": 0.25}}]}
    async with websockets.connect(url, additional_headers=headers) as socket:
        path = f"/api/ml/runs/{session_id}/metrics"
        await asyncio.to_thread(call, running, "POST", path, token, body)
        return json.loads(await asyncio.wait_for(socket.recv(), 10))
