import json

import pytest

pytestmark = pytest.mark.django_db


def test_it_streams_the_session_and_its_epochs(alice_client, make_session):
    session = make_session()
    for epoch in (1, 2, 3):
        session.record_epoch(epoch, {"val_loss": 1 / epoch})
    response = alice_client.get(f"/sessions/{session.pk}/metrics.json")
    assert response.status_code == 200 and response.streaming
    body = json.loads(b"".join(response.streaming_content))
    assert body["session"]["id"] == session.pk
    assert [e["epoch"] for e in body["epochs"]] == [1, 2, 3]
    assert body["epochs"][1]["metrics"]["val_loss"] == 0.5


def test_a_session_without_epochs_is_still_valid_json(alice_client, make_session):
    session = make_session()
    response = alice_client.get(f"/sessions/{session.pk}/metrics.json")
    assert json.loads(b"".join(response.streaming_content))["epochs"] == []


def test_it_hides_other_users_sessions(client, bob, make_session):
    session = make_session()
    client.force_login(bob)
    assert client.get(f"/sessions/{session.pk}/metrics.json").status_code == 404
