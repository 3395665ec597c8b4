"""The web process's PostgreSQL connections, on a real daphne.

By default each request thread keeps its connection (mltrack/asgi.py). With a
pool (DB_POOL=1), a connection taken by a request must come back to the pool
however the request ends. The one that did not: a client that leaves while its
request still runs in the database, for longer than daphne waits (10 s) before it
cancels the request. Django gave the connection back in request_finished, which a
cancelled request never reaches, so the pool lost one connection each time and,
once empty, refused every request and WebSocket handshake with PoolTimeout.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from contextlib import contextmanager

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
def web(tmp_path):
    """Daphne alone on the test database, with one request thread."""
    if connection.vendor != "postgresql":
        pytest.skip("connections are observed from PostgreSQL's side")
    running = Stack(REDIS_URL, tmp_path)
    # libpq names the connections: this daphne's are told from other processes'.
    running.env.update(WEB_THREADS="1", PGAPPNAME=f"test-web-{running.port}")
    yield running
    running.stop()


@pytest.fixture
def pooled_web(web):
    # A pool of one: a single lost connection leaves it empty.
    web.env.update(DB_POOL="1", DB_POOL_MAX_SIZE="1")
    web.start_daphne()
    return web


def _web_backends(running: Stack) -> list[tuple]:
    """(pid, start time) of the daphne's connections to the test database."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid, backend_start FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name = %s",
            [running.env["PGAPPNAME"]],
        )
        return cursor.fetchall()


def test_requests_share_one_kept_connection(web, alice):
    web.start_daphne()
    _, token = ApiToken.issue(alice)
    call(web, "GET", "/api/ml/training-data", token)
    first = _web_backends(web)
    for _ in range(3):
        call(web, "GET", "/api/ml/training-data", token)
    assert len(first) == 1
    assert _web_backends(web) == first


def test_a_kept_connection_that_died_is_replaced_before_a_request_uses_it(web, alice):
    web.start_daphne()
    _, token = ApiToken.issue(alice)
    call(web, "GET", "/api/ml/training-data", token)
    (killed,) = _web_backends(web)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s)", [killed[0]])
    # pg_terminate_backend only signals: wait until the backend has gone, so
    # the request meets a connection that died, not one that is dying.
    deadline = time.monotonic() + 10
    while killed in _web_backends(web):
        assert time.monotonic() < deadline, "the backend did not exit"
        time.sleep(0.01)
    assert call(web, "GET", "/api/ml/training-data", token)["total"] == 0
    assert _web_backends(web)[0] != killed


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
    # The log call waits for the row inside the database, holding the pool's
    # only connection, until daphne cancels it.
    with _log_call_cancelled_while_it_waits(pooled_web, token, run.pk):
        pass

    # The pool has its connection again: a request and a handshake get one.
    answer = call(pooled_web, "GET", f"/api/ml/training-session/{run.pk}", token)
    assert answer["session"]["currentEpoch"] == 1
    event = asyncio.run(_log_and_watch(pooled_web, token, run.pk, epoch=2))
    assert (event["type"], event["epoch"]) == ("training_progress", 2)


def test_a_request_cancelled_in_its_view_does_not_hold_up_the_next(web, alice):
    # Two request threads, taken last in, first out (mltrack/asgi.py): the
    # thread of a cancelled request whose view still runs must not be the next
    # request's, or that request waits for the view.
    web.env.update(WEB_THREADS="2")
    web.start_daphne()
    _, token = ApiToken.issue(alice)
    run = TrainingSession.objects.start_external(alice, "held", {}, 10, "custom")
    with _log_call_cancelled_while_it_waits(web, token, run.pk):
        # The second cancellation ended the request's handling (the first one
        # waits for the view to close its connections): its thread is given back.
        log = (web.log_dir / "daphne.log").read_text(errors="replace")
        assert log.count(CANCELLED) >= 2
        # Another request is answered while the view still waits for the row.
        answer = call(web, "GET", f"/api/ml/training-session/{run.pk}", token)
        assert answer["session"]["currentEpoch"] == 0
    # The view goes on once the row is free, and its thread serves again.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        answer = call(web, "GET", f"/api/ml/training-session/{run.pk}", token)
        if answer["session"]["currentEpoch"] == 1:
            break
        time.sleep(0.1)
    assert answer["session"]["currentEpoch"] == 1


@contextmanager
def _log_call_cancelled_while_it_waits(running: Stack, token: str, session_id: int):
    """Hold the run's row while a log call for it waits, and its client leaves,
    until daphne has cancelled the call twice; the row is let go on leaving."""
    with transaction.atomic():
        TrainingSession.objects.select_for_update().get(pk=session_id)
        _abandoned_log_call(running, token, session_id)
        # Daphne cancels a request still running 10 s after its client left, and
        # again every second until it ends: the second cancellation is the one
        # that lost a pooled connection. A request whose view runs on a request
        # thread ends at once and is never cancelled: hold the row as long.
        _wait_for_cancellations(running, 2, at_most=14)
        yield


def _wait_for_cancellations(running: Stack, count: int, at_most: float) -> None:
    log = running.log_dir / "daphne.log"
    deadline = time.monotonic() + at_most
    while log.read_text(errors="replace").count(CANCELLED) < count:
        if time.monotonic() > deadline:
            return
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
