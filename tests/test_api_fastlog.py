"""POST /api/ml/runs/<id>/metrics with one epoch, answered on the event loop
(sessions/fastlog.py): what it stores, pushes and answers is what the view does,
and every call it does not take reaches the view as sent.

Driven through the real ASGI handler with a real database; the view's answers
are told from the lane's by Django's request_started signal, which only the view
path sends."""

import json
import threading
import time
from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync
from asgiref.testing import ApplicationCommunicator
from django.core.signals import request_started
from django.db import connection
from django.db.models import Max
from django.test import override_settings
from django.utils.timezone import now

from mltrack.asgi import SyncViewsASGIHandler
from sessions import events, fastlog
from sessions.models import ApiToken, EpochMetric, TrainingEvent, TrainingSession

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def token(alice):
    """A token used a moment ago: its last-use time is not due to be written."""
    saved, raw = ApiToken.issue(alice)
    ApiToken.objects.filter(pk=saved.pk).update(last_used_at=now())
    return raw


@pytest.fixture
def run(alice):
    return TrainingSession.objects.start_external(alice, "run", {}, 100, "custom")


@pytest.fixture
def view_calls():
    """Paths of the requests Django's request handling took."""
    calls = []

    def heard(sender, scope=None, **kwargs):
        calls.append(scope["path"])

    request_started.connect(heard)
    yield calls
    request_started.disconnect(heard)


def post(path, body, token, headers=None, chunks=None):
    """(status, headers as a dict, body: JSON read) of a POST through the ASGI app;
    `headers` replace or add to a client's usual ones."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    sent = {
        b"host": b"127.0.0.1:8000",
        b"content-type": b"application/json",
        b"content-length": str(len(raw)).encode(),
        b"authorization": f"Bearer {token}".encode(),
        **(headers or {}),
    }
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": list(sent.items()),
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }

    async def call():
        app = ApplicationCommunicator(SyncViewsASGIHandler(), scope)
        for index, chunk in enumerate(chunks or [raw]):
            await app.send_input(
                {
                    "type": "http.request",
                    "body": chunk,
                    "more_body": index < len(chunks or [raw]) - 1,
                }
            )
        start = await app.receive_output(10)
        content = b""
        while True:
            message = await app.receive_output(10)
            content += message.get("body", b"")
            if not message.get("more_body"):
                break
        await app.wait(10)
        return start, content

    try:
        start, content = async_to_sync(call)()
    finally:
        # Its event loop is gone with this call, and a connection to the test
        # database would keep it from being dropped.
        fastlog._postgres_connections.close_all()
    headers = {
        name.decode().lower(): value.decode() for name, value in start["headers"]
    }
    assert headers.get("content-length", str(len(content))) == str(len(content))
    if headers.get("content-type") == "application/json":
        return start["status"], headers, json.loads(content)
    return start["status"], headers, content


def one_epoch(epoch=1, **metrics):
    metrics = metrics or {"train_loss": 0.5, "val_accuracy": 0.75, "my_metric": 3}
    return {"epochs": [{"epoch": epoch, "metrics": metrics, "duration": 0.25}]}


def test_a_one_epoch_call_stores_pushes_and_answers_as_the_view_does(
    alice, token, view_calls, event_tap
):
    by_view, by_lane = (
        TrainingSession.objects.start_external(alice, name, {}, 100, "custom")
        for name in ("view", "lane")
    )
    with override_settings(MLTRACK_FAST_LOG=False):
        view = post(f"/api/ml/runs/{by_view.pk}/metrics", one_epoch(), token)
    view_event = event_tap.next()
    lane = post(f"/api/ml/runs/{by_lane.pk}/metrics", one_epoch(), token)
    lane_event = event_tap.next()

    assert view_calls == [f"/api/ml/runs/{by_view.pk}/metrics"]  # not the lane's
    assert view[0] == lane[0] == 200
    # The same headers (the middleware's included), but for the length.
    del view[1]["content-length"], lane[1]["content-length"]
    assert lane[1] == view[1]
    assert lane[2].keys() == view[2].keys()
    assert (lane[2]["received"], lane[2]["stored"], lane[2]["duplicates"]) == (1, 1, 0)
    assert lane[2]["stopRequested"] is False

    # What was stored, as the ORM reads it back.
    by_lane.refresh_from_db()
    shown = by_lane.as_dict()
    for answered in (lane[2]["session"], lane_event["session"]):
        assert {k: v for k, v in answered.items() if k != "durationSeconds"} == {
            k: v for k, v in shown.items() if k != "durationSeconds"
        }
    assert by_lane.current_epoch == 1 and by_lane.best_val_accuracy == 0.75
    assert by_lane.final_metrics["my_metric"] == 3
    row = EpochMetric.objects.get(session=by_lane)
    assert (row.train_loss, row.val_accuracy, row.extra, row.duration) == (
        0.5,
        0.75,
        {"my_metric": 3},
        0.25,
    )
    assert row.created == by_lane.heartbeat_at
    stored = TrainingEvent.objects.get(session=by_lane, type="training_progress")
    assert stored.owner_id == alice.pk
    assert stored.data == {k: v for k, v in lane_event.items() if k != "_audiences"}

    # The event: the view's shape, this run's audiences.
    assert lane_event.keys() == view_event.keys()
    assert lane_event["session"].keys() == view_event["session"].keys()
    assert lane_event["metrics"] == row.metrics
    assert lane_event["savedAt"] == row.created.timestamp()
    assert lane_event["_audiences"] == [
        f"session-{by_lane.pk}",
        f"user-{alice.pk}",
        "staff",
    ]


def test_epochs_one_after_another_move_the_run_along(run, token, view_calls):
    for epoch in range(1, 6):
        status, _, answer = post(
            f"/api/ml/runs/{run.pk}/metrics",
            one_epoch(epoch, val_accuracy=[0.5, 0.9, 0.7, 0.6, 0.8][epoch - 1]),
            token,
        )
        assert status == 200 and answer["session"]["currentEpoch"] == epoch
    assert view_calls == []
    run.refresh_from_db()
    assert run.current_epoch == 5 and run.best_val_accuracy == 0.9
    assert run.final_metrics["val_accuracy"] == 0.8
    assert list(run.epochs.values_list("epoch", flat=True)) == [1, 2, 3, 4, 5]


@override_settings(
    SECURE_SSL_REDIRECT=True,
    SECURE_HSTS_SECONDS=3600,
    SECURE_HSTS_INCLUDE_SUBDOMAINS=True,
    SECURE_HSTS_PRELOAD=True,
)
def test_behind_a_tls_proxy_it_sends_the_views_security_headers(
    alice, token, view_calls
):
    by_view, by_lane = (
        TrainingSession.objects.start_external(alice, name, {}, 100, "custom")
        for name in ("view", "lane")
    )
    proxied = {b"x-forwarded-proto": b"https"}
    with override_settings(MLTRACK_FAST_LOG=False):
        view = post(f"/api/ml/runs/{by_view.pk}/metrics", one_epoch(), token, proxied)
    lane = post(f"/api/ml/runs/{by_lane.pk}/metrics", one_epoch(), token, proxied)
    assert view_calls == [f"/api/ml/runs/{by_view.pk}/metrics"]
    assert lane[0] == view[0] == 200
    del view[1]["content-length"], lane[1]["content-length"]
    assert lane[1] == view[1]
    assert "preload" in lane[1]["strict-transport-security"]

    # Without the proxy's word it is plain HTTP: the view redirects.
    status, headers, _ = post(f"/api/ml/runs/{by_lane.pk}/metrics", one_epoch(2), token)
    assert status == 301 and headers["location"].startswith("https://")
    assert by_lane.epochs.count() == 1


def _finish(run):
    run.mark_completed({})


def _revoke(run):
    ApiToken.objects.update(revoked_at=now())


def _store_epoch_1(run):
    run.record_epochs([(1, {"train_loss": 0.4}, None)])


def _use_token_long_ago(run):
    ApiToken.objects.update(last_used_at=now() - timedelta(minutes=5))


def _give_to_bob(run):
    from django.contrib.auth import get_user_model

    bob = get_user_model().objects.create_user("bob", password="bob-password-1")
    TrainingSession.objects.filter(pk=run.pk).update(owner=bob)


@pytest.mark.parametrize(
    ("prepare", "body", "headers", "status", "expected"),
    [
        (None, {"epochs": [{"epoch": 1, "metrics": {"x": "NaN"}}]}, None, 400, None),
        (None, {"epochs": []}, None, 400, None),
        (None, b"[1, 2", None, 400, None),
        (None, {"epochs": [{"epoch": 1, "metrics": {"x": 1.0}}] * 2}, None, 200, 1),
        (None, one_epoch(1, **{"\u00e9": 1.0}), None, 200, 1),
        (None, one_epoch(0), None, 200, 1),
        (_store_epoch_1, one_epoch(1), None, 200, 0),
        (_finish, one_epoch(1), None, 409, None),
        (_revoke, one_epoch(1), None, 401, None),
        (_give_to_bob, one_epoch(1), None, 404, None),
        (_use_token_long_ago, one_epoch(1), None, 200, 1),
        (None, one_epoch(1), {b"host": b"evil.example"}, 400, None),
    ],
    ids=[
        "bad metric",
        "no epochs",
        "not JSON",
        "two epochs",
        "non-ASCII name",
        "epoch 0",
        "already stored",
        "finished run",
        "revoked token",
        "another user's run",
        "last use due",
        "host not allowed",
    ],
)
def test_every_other_call_reaches_the_view_as_sent(
    run, token, view_calls, prepare, body, headers, status, expected
):
    if prepare:
        prepare(run)
    path = f"/api/ml/runs/{run.pk}/metrics"
    got, _, answer = post(path, body, token, headers)
    assert view_calls == [path]
    assert got == status
    if expected is not None:
        assert answer["stored"] == expected
    if prepare is _use_token_long_ago:
        # The view wrote the token's last use: the next call is the lane's.
        assert ApiToken.objects.get().last_used_at > now() - timedelta(minutes=1)


def _deactivate_owner(run):
    type(run.owner).objects.filter(pk=run.owner_id).update(is_active=False)


def _store_epoch_2(run):
    run.record_epochs([(2, {"train_loss": 0.4}, None)])


def _rename(run):
    TrainingSession.objects.filter(pk=run.pk).update(name="renamed")


def _ask_to_stop(run):
    TrainingSession.objects.filter(pk=run.pk).update(status="stopping")


@pytest.mark.parametrize(
    ("change", "status", "stored", "by_view"),
    [
        (_finish, 409, None, True),
        (_revoke, 401, None, True),
        (_deactivate_owner, 401, None, True),
        (_give_to_bob, 404, None, True),
        (_use_token_long_ago, 200, 1, True),
        (_store_epoch_2, 200, 0, True),
        (_rename, 200, 1, False),
        (_ask_to_stop, 200, 1, False),
    ],
    ids=[
        "finished",
        "token revoked",
        "owner deactivated",
        "given to another user",
        "last use due",
        "epoch stored by another call",
        "renamed",
        "asked to stop",
    ],
)
def test_a_run_changed_after_the_lanes_last_write_is_read_afresh(
    run, token, view_calls, change, status, stored, by_view
):
    # PostgreSQL: the lane knows the run as it wrote it (no read before the
    # next write), so the next write must find any change, token and owner too.
    path = f"/api/ml/runs/{run.pk}/metrics"
    assert post(path, one_epoch(1), token)[0] == 200
    known = (connection.settings_dict["NAME"], run.pk) in fastlog._known_runs.runs
    assert known == (connection.vendor == "postgresql")
    change(run)

    got, _, answer = post(path, one_epoch(2), token)
    assert (got, view_calls) == (status, [path] if by_view else [])
    if stored is not None:
        assert answer["stored"] == stored
    run.refresh_from_db()
    stored_epochs = list(run.epochs.values_list("epoch", flat=True))
    assert stored_epochs == ([1, 2] if got == 200 else [1])
    if not by_view:  # the lane answered from the run as it is now
        assert answer["session"]["name"] == run.name
        assert answer["stopRequested"] == (run.status == "stopping")
        assert run.epochs.get(epoch=2).train_loss == 0.5


def test_a_body_longer_than_its_content_length_reaches_the_view_whole(
    run, token, view_calls
):
    batch = {
        "epochs": [
            {"epoch": n, "metrics": {"train_loss": 1 / n}} for n in range(1, 301)
        ]
    }
    raw = json.dumps(batch).encode()
    middle = len(raw) // 2
    # The headers claim a small body; the rest comes after it.
    status, _, answer = post(
        f"/api/ml/runs/{run.pk}/metrics",
        raw,
        token,
        {b"content-length": b"100"},
        chunks=[raw[:middle], raw[middle:]],
    )
    assert status == 200 and answer["stored"] == 300
    assert view_calls == [f"/api/ml/runs/{run.pk}/metrics"]


def test_a_stop_requested_while_the_call_waits_is_in_its_answer(run, token, view_calls):
    # Another transaction asks the run to stop and commits while the call waits
    # for it (SQLite: for the write lock; PostgreSQL: for the run's row, after
    # the lane read it as running): the view answers, with the stop in it.
    other = connection.get_new_connection(connection.get_connection_params())
    mark = "?" if connection.vendor == "sqlite" else "%s"
    table = TrainingSession._meta.db_table
    other.execute(
        f'UPDATE "{table}" SET "status" = {mark} WHERE "id" = {mark}',
        ["stopping", run.pk],
    )

    def call_waits() -> bool:
        if connection.vendor == "sqlite":
            return bool(view_calls)  # the lane found the lock taken: the view waits
        # PostgreSQL: the lane's write waits for the run's row.
        waiting = watcher.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return waiting.fetchone()[0] > 0

    def commit_once_the_call_waits() -> None:
        deadline = time.monotonic() + 10
        while not call_waits() and time.monotonic() < deadline:
            time.sleep(0.01)
        other.commit()

    if connection.vendor != "sqlite":
        watcher = connection.get_new_connection(connection.get_connection_params())
        watcher.autocommit = True
    committer = threading.Thread(target=commit_once_the_call_waits)
    committer.start()
    try:
        status, _, answer = post(f"/api/ml/runs/{run.pk}/metrics", one_epoch(), token)
    finally:
        committer.join()
        other.close()
        if connection.vendor != "sqlite":
            watcher.close()
    assert status == 200 and answer["stored"] == 1
    assert answer["stopRequested"] is True
    assert view_calls == [f"/api/ml/runs/{run.pk}/metrics"]


def test_every_thousandth_event_prunes_those_past_retention(run, token, view_calls):
    old = TrainingEvent.objects.create(
        session=run, owner=run.owner, type="training_status", data={}
    )
    TrainingEvent.objects.filter(pk=old.pk).update(
        created=now() - events.EVENT_RETENTION - timedelta(hours=1)
    )
    # The next event's id is the next multiple of PRUNE_EVERY (ids are never
    # reused: the tests before this one drew some).
    every = events.PRUNE_EVERY
    pruning_id = (
        TrainingEvent.objects.aggregate(top=Max("id"))["top"] // every + 1
    ) * every
    table = TrainingEvent._meta.db_table
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            cursor.execute(
                "UPDATE sqlite_sequence SET seq = %s WHERE name = %s",
                [pruning_id - 1, table],
            )
        else:
            cursor.execute(
                "SELECT setval(pg_get_serial_sequence(%s, 'id'), %s)",
                [f'"{table}"', pruning_id - 1],
            )
    status, _, _ = post(f"/api/ml/runs/{run.pk}/metrics", one_epoch(), token)
    assert status == 200 and view_calls == []
    new = TrainingEvent.objects.get(session=run, type="training_progress")
    assert new.pk == pruning_id
    deadline = time.monotonic() + 10
    while TrainingEvent.objects.filter(pk=old.pk).exists():
        assert time.monotonic() < deadline, "the old event was not pruned"
        time.sleep(0.05)
