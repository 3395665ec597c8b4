import json

import pytest

from sessions.models import ApiToken, TrainingEvent, TrainingSession

pytestmark = pytest.mark.django_db


@pytest.fixture
def run(alice):
    return TrainingSession.objects.start_external(alice, "run", {}, 10, "custom")


def finish(client, run_id, body, auth):
    data = body if isinstance(body, str) else json.dumps(body)
    return client.post(
        f"/api/ml/runs/{run_id}/finish",
        data=data,
        content_type="application/json",
        **auth,
    )


def test_it_completes_a_run(client, auth, run):
    response = finish(client, run.pk, {"status": "completed"}, auth)
    assert response.status_code == 200
    assert response.json()["session"]["status"] == "completed"
    run.refresh_from_db()
    assert run.status == "completed" and run.finished_at
    assert TrainingEvent.objects.filter(session=run).last().type == "training_completed"


def test_it_records_a_failure_with_its_error(client, auth, run):
    body = {"status": "failed", "error": "CUDA out of memory"}
    response = finish(client, run.pk, body, auth)
    assert response.json()["session"]["error"] == "CUDA out of memory"
    run.refresh_from_db()
    assert run.status == "failed"
    assert TrainingEvent.objects.filter(session=run).last().type == "training_failed"


def test_a_run_asked_to_stop_ends_as_stopped(client, auth, run):
    run.request_stop()
    response = finish(client, run.pk, {"status": "completed"}, auth)
    assert response.json()["session"]["status"] == "stopped"
    assert response.json()["stopRequested"] is False


def test_a_repeated_finish_answers_200(client, auth, run):
    finish(client, run.pk, {"status": "completed"}, auth)
    response = finish(client, run.pk, {"status": "completed"}, auth)
    assert response.status_code == 200
    assert TrainingEvent.objects.filter(type="training_completed").count() == 1


def test_finishing_differently_after_the_end_is_409(client, auth, run):
    run.mark_failed("The script reported a failure")
    response = finish(client, run.pk, {"status": "completed"}, auth)
    assert response.status_code == 409
    assert "already finished (failed)" in response.json()["error"]


def test_a_run_failed_as_lost_can_still_complete(client, auth, run):
    from datetime import timedelta

    TrainingSession.objects.filter(pk=run.pk).update(
        heartbeat_at=run.heartbeat_at - timedelta(minutes=5)
    )
    assert run.mark_lost(timedelta(seconds=30))
    response = finish(client, run.pk, {"status": "completed"}, auth)
    assert response.status_code == 200
    assert response.json()["session"]["status"] == "completed"


@pytest.mark.parametrize(
    "body, field, text",
    [
        ({}, "status", "completed or failed"),
        ({"status": "stopped"}, "status", "completed or failed"),
        ({"status": 1}, "status", "completed or failed"),
        ({"status": "failed", "error": ["x"]}, "error", "must be a string"),
        ({"status": "failed", "error": "x" * 10_001}, "error", "at most 10000"),
    ],
)
def test_it_rejects_bad_input_naming_the_field(client, auth, run, body, field, text):
    response = finish(client, run.pk, body, auth)
    assert response.status_code == 400
    assert text in response.json()["fields"][field]
    run.refresh_from_db()
    assert run.status == "running"


def test_it_answers_404_for_an_unknown_run(client, auth):
    assert finish(client, 4242, {"status": "completed"}, auth).status_code == 404


def test_it_hides_other_users_runs(client, bob, run):
    other = {"HTTP_AUTHORIZATION": f"Bearer {ApiToken.issue(bob)[1]}"}
    assert finish(client, run.pk, {"status": "failed"}, other).status_code == 404
    run.refresh_from_db()
    assert run.status == "running"
