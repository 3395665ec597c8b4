import pytest

pytestmark = pytest.mark.django_db


@pytest.fixture
def trained(make_session):
    session = make_session(total_epochs=5)
    for epoch in range(1, 6):
        session.record_epoch(
            epoch, {"train_loss": 1 / epoch, "val_accuracy": epoch / 10}, 0.01
        )
    return session


def test_it_returns_every_epoch_in_order(alice_client, trained):
    body = alice_client.get(f"/api/ml/training-metrics/{trained.pk}").json()
    assert body["sessionId"] == trained.pk
    assert [e["epoch"] for e in body["epochs"]] == [1, 2, 3, 4, 5]
    assert body["epochs"][1]["metrics"]["train_loss"] == 0.5
    assert body["epochs"][0]["time"]


def test_it_returns_the_epochs_after_a_cursor(alice_client, trained):
    body = alice_client.get(f"/api/ml/training-metrics/{trained.pk}?after=3").json()
    assert [e["epoch"] for e in body["epochs"]] == [4, 5]


def test_it_rejects_a_bad_cursor(alice_client, trained):
    response = alice_client.get(f"/api/ml/training-metrics/{trained.pk}?after=x")
    assert response.status_code == 400
    assert "after" in response.json()["fields"]


def test_it_hides_other_users_sessions(client, bob, trained):
    client.force_login(bob)
    assert client.get(f"/api/ml/training-metrics/{trained.pk}").status_code == 404
