import pytest

pytestmark = pytest.mark.django_db


def test_it_cancels_a_queued_session(alice_client, make_session):
    session = make_session()
    response = alice_client.post(f"/api/ml/stop-training/{session.pk}")
    assert response.status_code == 200
    assert response.json()["session"]["status"] == "stopped"


def test_it_asks_a_running_session_to_stop(alice_client, make_session):
    session = make_session()
    session.mark_running("t")
    response = alice_client.post(f"/api/ml/stop-training/{session.pk}")
    assert response.json()["session"]["status"] == "stopping"


def test_it_refuses_a_finished_session_with_409(alice_client, make_session):
    session = make_session()
    session.request_stop()
    response = alice_client.post(f"/api/ml/stop-training/{session.pk}")
    assert response.status_code == 409
    assert "already finished" in response.json()["error"]


def test_it_hides_other_users_sessions(client, bob, make_session):
    session = make_session()
    client.force_login(bob)
    assert client.post(f"/api/ml/stop-training/{session.pk}").status_code == 404
    session.refresh_from_db()
    assert session.status == "queued"
