from datetime import timedelta

import pytest
from django.utils.timezone import now

from sessions.models import ApiToken, TrainingSession

pytestmark = pytest.mark.django_db


@pytest.fixture
def run(alice):
    return TrainingSession.objects.start_external(alice, "run", {}, None, "custom")


def beat(client, run_id, auth):
    return client.post(f"/api/ml/runs/{run_id}/heartbeat", **auth)


def test_it_keeps_a_quiet_run_from_looking_lost(client, auth, run):
    long_ago = now() - timedelta(hours=1)
    TrainingSession.objects.filter(pk=run.pk).update(heartbeat_at=long_ago)
    assert TrainingSession.objects.lost(timedelta(minutes=5)).filter(pk=run.pk).exists()
    response = beat(client, run.pk, auth)
    assert response.status_code == 200
    assert response.json()["stopRequested"] is False
    assert not TrainingSession.objects.lost(timedelta(minutes=5)).exists()


def test_a_silent_run_is_found_by_the_lost_worker_query(run):
    long_ago = now() - timedelta(hours=1)
    TrainingSession.objects.filter(pk=run.pk).update(heartbeat_at=long_ago)
    assert list(TrainingSession.objects.lost(timedelta(minutes=5))) == [run]


def test_it_tells_the_script_to_stop(client, auth, run):
    run.request_stop()
    assert beat(client, run.pk, auth).json()["stopRequested"] is True


def test_it_refuses_a_finished_run_with_409(client, auth, run):
    run.mark_failed("The script reported a failure")
    response = beat(client, run.pk, auth)
    assert response.status_code == 409
    assert "already finished (failed)" in response.json()["error"]


def test_it_answers_404_for_an_unknown_run(client, auth):
    assert beat(client, 31337, auth).status_code == 404


def test_it_hides_other_users_runs(client, bob, run):
    other = {"HTTP_AUTHORIZATION": f"Bearer {ApiToken.issue(bob)[1]}"}
    assert beat(client, run.pk, other).status_code == 404


def test_it_rejects_get(client, auth, run):
    assert client.get(f"/api/ml/runs/{run.pk}/heartbeat", **auth).status_code == 405


def test_a_heartbeat_brings_back_a_run_failed_as_lost(client, auth, run):
    long_ago = now() - timedelta(hours=1)
    TrainingSession.objects.filter(pk=run.pk).update(heartbeat_at=long_ago)
    assert run.mark_lost(timedelta(seconds=30))
    response = beat(client, run.pk, auth)
    assert response.status_code == 200
    assert response.json()["session"]["status"] == "running"
