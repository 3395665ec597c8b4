import json

import pytest

from sessions.models import TrainingSession

pytestmark = pytest.mark.django_db


def test_it_requires_login(client):
    response = client.get("/")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


def test_it_shows_the_training_tab_with_the_focus_sessions_history(
    alice_client, make_session
):
    session = make_session(total_epochs=4)
    session.mark_running("t")
    session.record_epoch(1, {"train_loss": 0.7})
    response = alice_client.get("/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "Train Random Forest" in html and "Epoch 1/4" in html
    data = json.loads(
        html.split('id="page-data" type="application/json">')[1].split("</script>")[0]
    )
    assert data["focus"]["id"] == session.pk
    assert [e["epoch"] for e in data["focusEpochs"]] == [1]


def test_the_models_tab_lists_model_types_and_parameters(alice_client):
    html = alice_client.get("/?tab=models").content.decode()
    assert (
        "trees_per_epoch" in html
        and "Gradient Boosting" in html
        and "synthetic" in html
    )


def test_it_does_not_show_other_users_sessions(client, bob, make_session):
    make_session(dataset="wine")
    client.force_login(bob)
    assert "wine" not in client.get("/").content.decode().split("History")[1]


def test_the_quick_button_starts_training(
    alice_client, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks() as callbacks:
        response = alice_client.post("/sessions/start/", {"modelType": "randomforest"})
    assert response.status_code == 302 and response["Location"] == "/?tab=training"
    assert TrainingSession.objects.get().total_epochs == 20
    assert len(callbacks) == 1


def test_a_bad_start_shows_a_message_and_creates_nothing(alice_client):
    response = alice_client.post("/sessions/start/", {"modelType": "svm"}, follow=True)
    assert "Unknown model type svm" in response.content.decode()
    assert TrainingSession.objects.count() == 0


def test_start_rejects_get(alice_client):
    assert alice_client.get("/sessions/start/").status_code == 405
