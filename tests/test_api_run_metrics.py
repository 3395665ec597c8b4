import json
import time

import pytest

from sessions import events
from sessions.models import ApiToken, EpochMetric, TrainingEvent, TrainingSession

pytestmark = pytest.mark.django_db


@pytest.fixture
def run(alice):
    return TrainingSession.objects.start_external(alice, "run", {}, 100, "custom")


def send(client, run_id, body, auth):
    data = body if isinstance(body, str) else json.dumps(body)
    return client.post(
        f"/api/ml/runs/{run_id}/metrics",
        data=data,
        content_type="application/json",
        **auth,
    )


def epochs(*numbers, **metrics):
    return {
        "epochs": [
            {
                "epoch": n,
                "metrics": metrics or {"train_loss": 1 / n, "val_accuracy": n / 100},
            }
            for n in numbers
        ]
    }


def test_it_stores_standard_and_custom_metrics(client, auth, run):
    body = {
        "epochs": [
            {
                "epoch": 1,
                "metrics": {"train_loss": 0.9, "val_accuracy": 0.5, "my_metric": 3},
                "duration": 0.25,
            }
        ]
    }
    response = send(client, run.pk, body, auth)
    assert response.status_code == 200
    assert response.json()["stored"] == 1 and response.json()["stopRequested"] is False
    row = EpochMetric.objects.get(session=run)
    assert (row.train_loss, row.val_accuracy, row.extra) == (0.9, 0.5, {"my_metric": 3})
    assert row.duration == 0.25
    run.refresh_from_db()
    assert run.current_epoch == 1 and run.best_val_accuracy == 0.5
    assert run.final_metrics["my_metric"] == 3


def test_it_stores_every_number_exactly_as_sent(client, auth, run):
    values = [0.1, 1 / 3, 5e-324, 1e-300, 1.7976931348623157e308, -2.5, 7, 10**300]
    body = {
        "epochs": [
            {"epoch": n, "metrics": {"val_loss": value, "custom": value}}
            for n, value in enumerate(values, start=1)
        ]
    }
    assert send(client, run.pk, body, auth).json()["stored"] == len(values)
    rows = run.epochs.order_by("epoch")
    assert [row.val_loss for row in rows] == [float(value) for value in values]
    # PostgreSQL's jsonb writes 1.8e308 out in full (an int to json.loads).
    assert [float(row.extra["custom"]) for row in rows] == [float(v) for v in values]


def test_an_integer_beyond_64_bits_is_stored_exactly(client, auth, run):
    # The body parser (orjson) would read it as a float: such a body goes to json.
    big = 2**64 + 1
    body = {"epochs": [{"epoch": 1, "metrics": {"val_loss": 0.5, "count": big}}]}
    assert send(client, run.pk, body, auth).json()["stored"] == 1
    assert run.epochs.get().extra == {"count": big}


@pytest.mark.parametrize(
    "value",
    [-(2**64) - 1, 10**20, 0.00012345678901234567, 12345678901234567890.5],
    ids=["negative integer", "integer as JavaScript writes 1e20", "small", "large"],
)
def test_long_runs_of_digits_are_stored_exactly(client, auth, run, value):
    # Integers go to json (orjson would make floats of them), a float's long
    # run of fraction digits to orjson: both read as json.loads reads them.
    body = {"epochs": [{"epoch": 1, "metrics": {"val_loss": 0.5, "x": value}}]}
    assert send(client, run.pk, body, auth).json()["stored"] == 1
    stored = run.epochs.get().extra["x"]
    if isinstance(value, int):
        assert stored == value and isinstance(stored, int)
    else:  # PostgreSQL's jsonb writes 1.2e19 out in full (an int to json.loads)
        assert float(stored) == value


def test_epochs_of_one_batch_may_log_different_metrics(client, auth, run):
    body = {
        "epochs": [
            {"epoch": 1, "metrics": {"train_loss": 0.9}},
            {"epoch": 2, "metrics": {"val_loss": 0.8, "mine": 1}, "duration": 0.5},
            {"epoch": 3, "metrics": {"mine": 2}},
        ]
    }
    assert send(client, run.pk, body, auth).json()["stored"] == 3
    rows = run.epochs.order_by("epoch")
    assert [(r.train_loss, r.val_loss, r.duration, r.extra) for r in rows] == [
        (0.9, None, None, {}),
        (None, 0.8, 0.5, {"mine": 1}),
        (None, None, None, {"mine": 2}),
    ]


def test_custom_metric_names_are_stored_exactly_whatever_their_characters(
    client, auth, run
):
    # On PostgreSQL the custom metrics travel as elements of an array literal,
    # where quotes, backslashes, braces, commas and NULL have meanings.
    names = ['a"b', "c\\d", "{e}", "f,g", "NULL", "h i", "é✓", '\\"', "}"]
    body = {
        "epochs": [
            {"epoch": n, "metrics": {name: n, "train_loss": 0.5}}
            for n, name in enumerate(names, start=1)
        ]
        + [{"epoch": len(names) + 1, "metrics": dict.fromkeys(names, 0.25)}]
    }
    assert send(client, run.pk, body, auth).json()["stored"] == len(names) + 1
    rows = list(run.epochs.order_by("epoch"))
    assert [row.extra for row in rows[:-1]] == [
        {name: n} for n, name in enumerate(names, start=1)
    ]
    assert rows[-1].extra == dict.fromkeys(names, 0.25)
    assert {row.train_loss for row in rows} == {0.5, None}


def test_it_stores_a_batch_of_thousands_in_epoch_order(client, auth, run):
    numbers = list(range(5000, 0, -1))  # arrives backwards
    started = time.perf_counter()
    response = send(client, run.pk, epochs(*numbers), auth)
    took = time.perf_counter() - started
    assert response.json()["stored"] == 5000
    print(f"\nBATCH: 5000 epochs stored in {took * 1000:.0f} ms")
    stored = list(run.epochs.order_by("epoch").values_list("epoch", flat=True))
    assert stored == list(range(1, 5001))
    body = client.get(f"/api/ml/training-metrics/{run.pk}", **auth).json()
    assert [e["epoch"] for e in body["epochs"]][:3] == [1, 2, 3]
    run.refresh_from_db()
    assert run.current_epoch == 5000 and run.best_val_accuracy == 50.0


def test_an_epoch_sent_twice_is_stored_once(client, auth, run):
    send(client, run.pk, epochs(1, 2, 3), auth)
    response = send(client, run.pk, epochs(2, 3, 4, 4), auth)
    assert response.json()["stored"] == 1 and response.json()["duplicates"] == 3
    assert list(run.epochs.values_list("epoch", flat=True)) == [1, 2, 3, 4]


def test_a_late_earlier_epoch_does_not_move_the_counters_back(client, auth, run):
    send(client, run.pk, epochs(10), auth)
    send(client, run.pk, epochs(5), auth)
    run.refresh_from_db()
    assert run.current_epoch == 10
    assert run.final_metrics["train_loss"] == 0.1


def test_it_pushes_one_progress_event_per_epoch_for_a_small_batch(client, auth, run):
    send(client, run.pk, epochs(1, 2, 3), auth)
    progress = TrainingEvent.objects.filter(session=run, type="training_progress")
    assert [e.data["epoch"] for e in progress] == [1, 2, 3]
    assert progress[0].data["metrics"]["train_loss"] == 1.0


def test_it_coalesces_a_large_batch_into_one_event(client, auth, run):
    count = events.PER_EPOCH_EVENTS_UP_TO + 1
    send(client, run.pk, epochs(*range(1, count + 1)), auth)
    (event,) = TrainingEvent.objects.filter(session=run, type="training_progress")
    assert event.data["epoch"] == count
    assert event.data["coalesced"] == {
        "count": count,
        "firstEpoch": 1,
        "lastEpoch": count,
    }


def test_a_batch_is_pushed_once_its_rows_are_committed(
    client, auth, run, event_tap, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks() as on_commit:
        send(client, run.pk, epochs(1, 2), auth)
    # Stored in the rows' transaction, for pollers; pushed after its commit.
    progress = TrainingEvent.objects.filter(session=run, type="training_progress")
    assert [e.data["epoch"] for e in progress] == [1, 2]
    (push,) = on_commit
    push()
    assert [event_tap.next()["epoch"] for _ in range(2)] == [1, 2]


def test_a_retried_batch_pushes_nothing_new(client, auth, run):
    send(client, run.pk, epochs(1, 2), auth)
    send(client, run.pk, epochs(1, 2), auth)
    assert TrainingEvent.objects.filter(type="training_progress").count() == 2


def test_it_refreshes_the_heartbeat(client, auth, run):
    TrainingSession.objects.filter(pk=run.pk).update(heartbeat_at=None)
    send(client, run.pk, epochs(1), auth)
    run.refresh_from_db()
    assert run.heartbeat_at is not None


def test_it_tells_the_script_to_stop(client, auth, run):
    run.request_stop()
    response = send(client, run.pk, epochs(1), auth)
    assert response.status_code == 200 and response.json()["stopRequested"] is True


@pytest.mark.parametrize(
    "body, field, text",
    [
        ({}, "epochs", "required"),
        ({"epochs": []}, "epochs", "non-empty list"),
        ({"epochs": {"epoch": 1}}, "epochs", "non-empty list"),
        ({"epochs": [5]}, "epochs[0]", "must be an object"),
        ({"epochs": [{"metrics": {"a": 1}}]}, "epochs[0].epoch", "integer"),
        (
            {"epochs": [{"epoch": "1", "metrics": {"a": 1}}]},
            "epochs[0].epoch",
            "integer",
        ),
        (
            {"epochs": [{"epoch": 1.5, "metrics": {"a": 1}}]},
            "epochs[0].epoch",
            "integer",
        ),
        (
            {"epochs": [{"epoch": -1, "metrics": {"a": 1}}]},
            "epochs[0].epoch",
            "between 0",
        ),
        (
            {"epochs": [{"epoch": 2**40, "metrics": {"a": 1}}]},
            "epochs[0].epoch",
            "between 0",
        ),
        ({"epochs": [{"epoch": 1}]}, "epochs[0].metrics", "non-empty object"),
        ({"epochs": [{"epoch": 1, "metrics": {}}]}, "epochs[0].metrics", "non-empty"),
        (
            {
                "epochs": [
                    {"epoch": 1, "metrics": {"a": 1}},
                    {"epoch": 7, "metrics": {"loss": "low"}},
                ]
            },
            "epochs[1].metrics.loss",
            "epoch 7: metric loss must be a finite number",
        ),
        (
            {"epochs": [{"epoch": 3, "metrics": {"ok": True}}]},
            "epochs[0].metrics.ok",
            "epoch 3: metric ok",
        ),
        (
            {"epochs": [{"epoch": 3, "metrics": {"huge": 10**400}}]},
            "epochs[0].metrics.huge",
            "epoch 3: metric huge must be a finite number",
        ),
        (
            {"epochs": [{"epoch": 3, "metrics": {"x" * 101: 1}}]},
            "epochs[0].metrics",
            "metric names",
        ),
        (
            {"epochs": [{"epoch": 3, "metrics": {f"m{i}": 1 for i in range(201)}}]},
            "epochs[0].metrics",
            "at most 200 metrics",
        ),
        (
            {"epochs": [{"epoch": 3, "metrics": {"a": 1}, "duration": -1}]},
            "epochs[0].duration",
            "duration",
        ),
    ],
)
def test_it_rejects_bad_input_naming_the_field(client, auth, run, body, field, text):
    response = send(client, run.pk, body, auth)
    assert response.status_code == 400
    assert text in response.json()["fields"][field]
    assert text in response.json()["error"]
    assert not run.epochs.exists()


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1" + "0" * 400])
def test_it_rejects_non_finite_numbers_naming_epoch_and_metric(
    client, auth, run, literal
):
    body = '{"epochs": [{"epoch": 4, "metrics": {"val_loss": LITERAL}}]}'.replace(
        "LITERAL", literal
    )
    response = send(client, run.pk, body, auth)
    assert response.status_code == 400
    assert response.json()["fields"]["epochs[0].metrics.val_loss"].startswith(
        "epoch 4: metric val_loss must be a finite number"
    )
    assert not run.epochs.exists()


def test_a_bad_epoch_rejects_the_whole_batch(client, auth, run):
    body = epochs(1, 2)
    body["epochs"].append({"epoch": 3, "metrics": {"loss": None}})
    assert send(client, run.pk, body, auth).status_code == 400
    assert not run.epochs.exists()


def test_it_refuses_too_many_epochs_in_one_request_with_413(client, auth, run):
    response = send(client, run.pk, epochs(*range(1, 10_002)), auth)
    assert response.status_code == 413
    assert "at most 10000" in response.json()["error"]


def test_it_refuses_a_finished_run_with_409(client, auth, run):
    run.mark_completed({})
    response = send(client, run.pk, epochs(1), auth)
    assert response.status_code == 409
    assert "already finished (completed)" in response.json()["error"]
    assert not run.epochs.exists()


def test_it_refuses_a_session_trained_by_mltrack_with_409(client, auth, make_session):
    session = make_session()
    response = send(client, session.pk, epochs(1), auth)
    assert response.status_code == 409
    assert "not logged by a script" in response.json()["error"]


def test_it_answers_404_for_an_unknown_run(client, auth):
    response = send(client, 999, epochs(1), auth)
    assert response.status_code == 404 and response.json()["error"] == "No run 999"


def test_it_hides_other_users_runs(client, bob, run):
    other = {"HTTP_AUTHORIZATION": f"Bearer {ApiToken.issue(bob)[1]}"}
    assert send(client, run.pk, epochs(1), other).status_code == 404
    assert not run.epochs.exists()


def test_a_run_failed_as_lost_comes_back_when_the_script_logs_again(client, auth, run):
    from datetime import timedelta

    TrainingSession.objects.filter(pk=run.pk).update(
        heartbeat_at=run.heartbeat_at - timedelta(minutes=5)
    )
    assert run.mark_lost(timedelta(seconds=30))
    response = send(client, run.pk, epochs(1, 2), auth)
    assert response.status_code == 200
    assert response.json()["session"]["status"] == "running"
    assert list(run.epochs.values_list("epoch", flat=True)) == [1, 2]
    run.refresh_from_db()
    assert run.error == "" and run.finished_at is None


def test_a_run_failed_by_its_script_stays_failed(client, auth, run):
    run.mark_failed("CUDA out of memory")
    assert send(client, run.pk, epochs(1), auth).status_code == 409


def test_its_statements_are_prepared_once_on_postgresql(client, auth, run):
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("prepared statements are PostgreSQL's")
    for number in range(1, 4):
        assert send(client, run.pk, epochs(number), auth).status_code == 200
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements")
        prepared = [statement for (statement,) in cursor.fetchall()]
    # The token, the run, the epochs with the run's counters, the event: each
    # planned once for the three calls.
    for marker in (
        'FROM "training_apitoken"',
        '"training_trainingsession" WHERE "id" = $1 AND "owner_id" = $2',
        'WITH held AS (SELECT "id", "current_epoch" FROM "training_trainingsession"',
        'INSERT INTO "training_trainingevent"',
    ):
        assert sum(marker in statement for statement in prepared) == 1, prepared
    assert len(prepared) == len(set(prepared))
    assert list(run.epochs.values_list("epoch", flat=True)) == [1, 2, 3]


def test_a_database_error_in_a_prepared_statement_is_djangos(client, auth, run):
    from django.db import IntegrityError, connection, transaction

    from sessions.models import _hot_cursor

    if connection.vendor != "postgresql":
        pytest.skip("prepared statements are PostgreSQL's")
    insert = (
        'INSERT INTO "training_epochmetric" ("epoch", "session_id", "created",'
        ' "extra") VALUES (%s, %s, now(), %s::jsonb)'
    )
    with _hot_cursor(connection) as cursor:
        cursor.execute(insert, [1, run.pk, "{}"])
    # The same epoch again breaks the (session, epoch) constraint: the API
    # catches Django's exceptions, not the driver's.
    with pytest.raises(IntegrityError), transaction.atomic():
        with _hot_cursor(connection) as cursor:
            cursor.execute(insert, [1, run.pk, "{}"])
    assert run.epochs.count() == 1
