"""Scale-out, shown: two Celery worker processes and two daphne processes on one
Redis and one database. Sessions started through either web process spread over both
workers, and WebSocket clients on either web process receive every event of every
session, whichever worker produced it.

In the PostgreSQL pass of scripts/test this is the production layout in miniature.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
import websockets

from sessions.models import ApiToken, EpochMetric, TrainingSession
from tests.conftest import ws_events

pytestmark = pytest.mark.django_db(transaction=True)

SESSIONS = 4
EPOCHS = 8
FINAL = {"training_completed", "training_failed", "training_stopped"}
# The line a worker logs when run_training returns; a task that found every run slot
# taken is retried, possibly on the other worker, so only this line says who ran it.
TRAINED = re.compile(
    r"Task sessions\.tasks\.run_training\[([0-9a-f-]+)\] succeeded in [0-9.]+s: "
    r"'session (\d+) completed"
)
# second_web_and_worker (tests/conftest.py) adds the second worker and daphne.


def _post(base_url: str, path: str, token: str, body: dict) -> dict:
    request = urllib.request.Request(
        base_url + path,
        method="POST",
        data=json.dumps(body).encode(),
        headers={
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
        },
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 201
        return json.loads(response.read())


async def _listen(url: str, token: str, events: list, expected: set, ready) -> None:
    """Collect events until every expected session has ended."""
    async with websockets.connect(
        url, additional_headers={"Authorization": f"Bearer {token}"}
    ) as socket:
        ready.set()
        while True:
            raw = await asyncio.wait_for(socket.recv(), timeout=180)
            events.extend(ws_events(raw))
            ended = {e["session"]["id"] for e in events if e["type"] in FINAL}
            if expected and expected <= ended:
                return


async def _run(webs: list[str], tokens: dict[str, str]) -> tuple[list[int], dict]:
    expected: set[int] = set()
    received: dict[str, list] = {}
    listeners = []
    for number, web in enumerate(webs):
        ws = web.replace("http", "ws") + "/ws/training/"
        for who, token in tokens.items():
            name = f"{who} on daphne {'AB'[number]}"
            received[name] = []
            ready = asyncio.Event()
            listeners.append(
                asyncio.create_task(_listen(ws, token, received[name], expected, ready))
            )
            await asyncio.wait_for(ready.wait(), timeout=30)
    ids = []
    for number in range(SESSIONS):
        # Alternate the web process that takes the request.
        created = await asyncio.to_thread(
            _post,
            webs[number % 2],
            "/api/ml/start-training",
            tokens["alice"],
            {"modelType": "randomforest", "dataset": "digits", "epochs": EPOCHS},
        )
        ids.append(created["session"]["id"])
    expected.update(ids)
    await asyncio.wait_for(asyncio.gather(*listeners), timeout=300)
    return ids, received


def _worker_of_sessions(logs: dict[str, Path]) -> dict[int, list[tuple[str, str]]]:
    """Session id -> (worker, Celery task id) of each run that trained it."""
    trained: dict[int, list[tuple[str, str]]] = {}
    for worker, log in logs.items():
        for task_id, pk in TRAINED.findall(log.read_text(errors="replace")):
            trained.setdefault(int(pk), []).append((worker, task_id))
    return trained


def test_two_workers_and_two_web_processes_share_the_work_and_every_event(
    live_stack, second_web_and_worker, alice, staff
):
    web_b, worker_b_log = second_web_and_worker
    tokens = {"alice": ApiToken.issue(alice)[1], "staff": ApiToken.issue(staff)[1]}
    started = time.monotonic()
    ids, received = asyncio.run(_run([live_stack.url, web_b], tokens))
    wall = time.monotonic() - started

    sessions = TrainingSession.objects.in_bulk(ids)
    assert all(s.status == "completed" for s in sessions.values())

    # Every session ran on one of the two workers, and both workers had runs.
    logs = {"worker": live_stack.log_dir / "worker.log", "worker-b": worker_b_log}
    # A worker logs "succeeded" only after run_training returns, which is after its
    # final event went out and was stored: give the log a moment to catch up.
    deadline = time.monotonic() + 30
    trained = _worker_of_sessions(logs)
    while not set(ids) <= set(trained) and time.monotonic() < deadline:
        time.sleep(0.1)
        trained = _worker_of_sessions(logs)
    ran_on = {}
    for pk in ids:
        # Exactly one run per session, by the task recorded on the session.
        [(worker, task_id)] = trained[pk]
        assert task_id == sessions[pk].task_id
        ran_on[pk] = worker
    assert set(ran_on.values()) == {"worker", "worker-b"}, ran_on

    # Every socket, on either web process, saw the same full story of every run.
    stories = {}
    for name, events in received.items():
        mine = [e for e in events if e["session"]["id"] in sessions]
        story = Counter((e["session"]["id"], e["type"], e.get("epoch")) for e in mine)
        for pk in ids:
            progress = [
                e["epoch"]
                for e in mine
                if e["session"]["id"] == pk and e["type"] == "training_progress"
            ]
            assert progress == list(range(1, EPOCHS + 1)), (name, pk)
            assert story[(pk, "training_started", None)] == 1, (name, pk)
            assert story[(pk, "training_completed", None)] == 1, (name, pk)
        stories[name] = story
    first = next(iter(stories.values()))
    assert all(story == first for story in stories.values())
    assert EpochMetric.objects.filter(session__in=ids).count() == SESSIONS * EPOCHS

    print(
        f"\nSCALE-OUT: {SESSIONS} sessions x {EPOCHS} epochs in {wall:.1f} s; "
        f"runs per worker {dict(Counter(ran_on.values()))}; "
        f"{len(received)} sockets on 2 daphne processes each got "
        f"{sum(first.values())} events"
    )
