import pytest

pytestmark = pytest.mark.django_db


def test_it_returns_the_session(alice_client, make_session):
    session = make_session()
    response = alice_client.get(f"/api/ml/training-session/{session.pk}")
    assert response.status_code == 200
    body = response.json()["session"]
    for key in (
        "id",
        "modelType",
        "dataset",
        "status",
        "currentEpoch",
        "totalEpochs",
        "progress",
        "createdAt",
        "startedAt",
        "finishedAt",
        "durationSeconds",
        "params",
        "finalMetrics",
        "error",
    ):
        assert key in body
    assert body["modelType"] == "randomforest"


def test_it_hides_other_users_sessions(client, bob, make_session):
    client.force_login(bob)
    response = client.get(f"/api/ml/training-session/{make_session().pk}")
    assert response.status_code == 404
    assert response.json()["error"]


def test_staff_see_every_session(client, staff, make_session):
    client.force_login(staff)
    assert (
        client.get(f"/api/ml/training-session/{make_session().pk}").status_code == 200
    )


def test_it_requires_login(client, make_session):
    assert (
        client.get(f"/api/ml/training-session/{make_session().pk}").status_code == 401
    )
