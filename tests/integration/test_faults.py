"""Faults on real processes: Redis and daphne restarted mid-run, floods of viewers,
a stalled viewer. Each test checks that nothing was lost: the database holds every
epoch once, and a viewer that reconnects and backfills as the page does ends with
every epoch exactly once."""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request

import pytest
import websockets

from sessions.models import ApiToken, EpochMetric, TrainingSession
from tests.conftest import ROOT, Stack, stack, ws_events
from tests.conftest import call_api as call

pytestmark = pytest.mark.django_db(transaction=True)

FINAL = {"completed", "failed", "stopped"}
# A run of a few seconds: long enough to break something in the middle.
LONG_RUN = {
    "modelType": "mlp",
    "dataset": "digits",
    "epochs": 40,
    "params": {"hidden_layer_sizes": "128,64", "batch_size": 32},
}


class RedisServer:
    """A redis-server of this test's own, so it can be restarted."""

    def __init__(self) -> None:
        self.port = stack.free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process = None

    def start(self) -> None:
        self.process = stack.start_redis(self.port, ROOT / "var" / f"redis-{self.port}")

    def stop(self) -> None:
        stack.stop([self.process])


@pytest.fixture
def redis_server():
    server = RedisServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def own_stack(redis_server, tmp_path):
    running = Stack(redis_server.url, tmp_path).start()
    yield running
    running.stop()


class Viewer:
    """Watches one session the way the page does: live events, and after every
    (re)connect a backfill from the API of the epochs after the last one seen."""

    def __init__(self, stack_, token: str, session_id: int) -> None:
        self.stack = stack_
        self.token = token
        self.session_id = session_id
        self.epochs: dict[int, dict] = {}
        self.duplicates_ignored = 0
        self.connections = 0
        self.status = "queued"

    def add(self, epoch: int, metrics: dict) -> None:
        if epoch in self.epochs:
            self.duplicates_ignored += 1
        else:
            self.epochs[epoch] = metrics

    async def backfill(self) -> None:
        last = max(self.epochs, default=0)
        body = await asyncio.to_thread(
            call,
            self.stack,
            "GET",
            f"/api/ml/training-metrics/{self.session_id}?after={last}",
            self.token,
        )
        for row in body["epochs"]:
            self.add(row["epoch"], row["metrics"])
        self.status = body["status"]

    async def watch(self, deadline: float = 180) -> None:
        url = f"{self.stack.url.replace('http', 'ws')}/ws/training/{self.session_id}/"
        headers = {"Authorization": f"Bearer {self.token}"}
        delay = 0.2
        give_up = time.monotonic() + deadline
        while time.monotonic() < give_up:
            try:
                async with websockets.connect(
                    url, additional_headers=headers, open_timeout=5
                ) as socket:
                    self.connections += 1
                    delay = 0.2
                    await self.backfill()
                    while self.status not in FINAL:
                        raw = await asyncio.wait_for(socket.recv(), 60)
                        for event in ws_events(raw):
                            if event["type"] == "training_progress":
                                if event["epoch"] > max(self.epochs, default=0) + 1:
                                    await self.backfill()  # dropped: fetch the gap
                                self.add(event["epoch"], event["metrics"])
                            self.status = event["session"]["status"]
                    await self.backfill()
                    return
            except (
                TimeoutError,
                OSError,
                websockets.ConnectionClosed,
                websockets.InvalidHandshake,
                EOFError,
                urllib.error.URLError,
            ):
                await asyncio.sleep(delay)  # reconnect with backoff, as the page does
                delay = min(delay * 2, 2)
        raise AssertionError(
            f"session {self.session_id} did not finish in {deadline} s"
        )


def wait_for_epoch(session_id: int, epoch: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if EpochMetric.objects.filter(session_id=session_id, epoch__gte=epoch).exists():
            return
        time.sleep(0.05)
    raise AssertionError(f"epoch {epoch} of session {session_id} never came")


def run_with_fault(stack_, alice, fault) -> tuple[TrainingSession, Viewer]:
    _, token = ApiToken.issue(alice)
    session_id = call(stack_, "POST", "/api/ml/start-training", token, LONG_RUN)[
        "session"
    ]["id"]
    viewer = Viewer(stack_, token, session_id)

    async def scenario():
        watching = asyncio.create_task(viewer.watch())
        await asyncio.to_thread(wait_for_epoch, session_id, 3)
        await asyncio.to_thread(fault)
        await watching

    asyncio.run(scenario())
    return TrainingSession.objects.get(pk=session_id), viewer


def assert_nothing_lost(session: TrainingSession, viewer: Viewer) -> None:
    assert session.status == "completed", session.error
    stored = list(session.epochs.values_list("epoch", flat=True))
    assert stored == list(range(1, 41))
    assert sorted(viewer.epochs) == stored


def test_a_redis_restart_mid_run_loses_no_epoch(own_stack, redis_server, alice):
    def restart_redis():
        redis_server.stop()
        time.sleep(1)  # Redis stays down for a second while the run goes on
        redis_server.start()

    session, viewer = run_with_fault(own_stack, alice, restart_redis)
    assert_nothing_lost(session, viewer)
    assert viewer.connections >= 2  # the socket broke and the viewer came back


def test_a_daphne_restart_mid_run_loses_no_epoch(own_stack, alice):
    def restart_daphne():
        stack.stop([own_stack.daphne])
        own_stack.start_daphne()

    session, viewer = run_with_fault(own_stack, alice, restart_daphne)
    assert_nothing_lost(session, viewer)
    assert viewer.connections >= 2


def test_hundreds_of_viewers_and_a_stalled_one_all_get_every_epoch(live_stack, alice):
    _, token = ApiToken.issue(alice)
    body = {"modelType": "logistic", "dataset": "iris", "epochs": 30}
    session_id = call(live_stack, "POST", "/api/ml/start-training", token, body)[
        "session"
    ]["id"]
    url = f"{live_stack.url.replace('http', 'ws')}/ws/training/{session_id}/"
    headers = {"Authorization": f"Bearer {token}"}

    async def scenario():
        # One viewer that connects and never reads: its buffer fills, nobody waits.
        stalled = await websockets.connect(
            url, additional_headers=headers, max_size=None, open_timeout=30
        )
        viewers = [Viewer(live_stack, token, session_id) for _ in range(300)]
        await asyncio.gather(*(v.watch() for v in viewers))
        await stalled.close()
        return viewers

    viewers = asyncio.run(scenario())
    session = TrainingSession.objects.get(pk=session_id)
    assert session.status == "completed"
    for viewer in viewers:
        assert sorted(viewer.epochs) == list(range(1, 31))


def test_a_subscription_that_redis_drops_mid_run_loses_no_epoch(
    redis_server, tmp_path, alice
):
    """Redis drops a web process's subscription (a subscriber over its output
    buffer limit, a CLIENT KILL, a network blip), and whatever is published until
    it subscribes again is gone. The process closes its sockets (1013); the viewer
    reconnects, backfills from the API and ends with every epoch once."""
    import redis as redis_client

    stack_ = Stack(redis_server.url, tmp_path)
    stack_.start()
    try:
        _, token = ApiToken.issue(alice)
        body = {"modelType": "logistic", "dataset": "iris", "epochs": 150}
        session_id = call(stack_, "POST", "/api/ml/start-training", token, body)[
            "session"
        ]["id"]
        viewer = Viewer(stack_, token, session_id)

        def drop_subscriptions():
            wait_for_epoch(session_id, 3)
            admin = redis_client.Redis.from_url(redis_server.url)
            assert admin.client_kill_filter(_type="pubsub") >= 1
            admin.close()

        async def scenario():
            watching = asyncio.create_task(viewer.watch())
            await asyncio.to_thread(drop_subscriptions)
            await watching

        asyncio.run(scenario())
    finally:
        stack_.stop()
    assert TrainingSession.objects.get(pk=session_id).status == "completed"
    assert sorted(viewer.epochs) == list(range(1, 151))
    assert viewer.connections >= 2  # its socket was closed, and it came back


def test_the_worker_retries_its_writes_while_the_database_is_unavailable(
    redis_server, tmp_path, alice
):
    """SQLite: another process holds the write lock longer than the busy timeout.
    PostgreSQL: every connection of the worker is killed mid-run. Either way the
    worker's writes fail, it retries, and no epoch is lost or stored twice."""
    import sqlite3

    from django.db import connection

    flaky = Stack(redis_server.url, tmp_path)
    flaky.env["SQLITE_BUSY_TIMEOUT"] = "1"
    flaky.start()
    worker_log = tmp_path / "worker.log"

    def retried() -> bool:
        return "retrying in" in worker_log.read_text(errors="replace")

    try:
        _, token = ApiToken.issue(alice)
        session_id = call(flaky, "POST", "/api/ml/start-training", token, LONG_RUN)[
            "session"
        ]["id"]
        wait_for_epoch(session_id, 3)
        deadline = time.monotonic() + 120
        if connection.vendor == "sqlite":
            locker = sqlite3.connect(
                connection.settings_dict["NAME"], timeout=30, isolation_level=None
            )
            locker.execute("BEGIN EXCLUSIVE")
            try:
                while not retried() and time.monotonic() < deadline:
                    time.sleep(0.1)  # hold the lock until the worker has retried
            finally:
                locker.execute("ROLLBACK")
                locker.close()
        else:
            while not retried() and time.monotonic() < deadline:
                with connection.cursor() as cursor:
                    cursor.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                        " WHERE datname = current_database()"
                        " AND pid <> pg_backend_pid()"
                    )
                time.sleep(0.2)
        assert retried(), "the worker never met the database fault"
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            session = TrainingSession.objects.get(pk=session_id)
            if session.status in FINAL:
                break
            time.sleep(0.2)
    finally:
        flaky.stop()
    assert session.status == "completed", session.error
    assert list(session.epochs.values_list("epoch", flat=True)) == list(range(1, 41))
