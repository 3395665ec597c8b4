import pytest

from sessions.models import TrainingSession

pytestmark = pytest.mark.django_db


def test_it_requires_login(client):
    response = client.post("/sessions/start/", {"modelType": "randomforest"})
    assert response.status_code == 302
    assert TrainingSession.objects.count() == 0


def test_it_rejects_get(alice_client):
    assert alice_client.get("/sessions/start/").status_code == 405


def test_the_quick_button_starts_training(
    alice_client, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks() as callbacks:
        response = alice_client.post("/sessions/start/", {"modelType": "randomforest"})
    assert response.status_code == 302 and response["Location"] == "/?tab=training"
    assert TrainingSession.objects.get().total_epochs == 20
    assert len(callbacks) == 1


def test_the_custom_form_sends_the_chosen_models_parameters(
    alice_client, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks():
        response = alice_client.post(
            "/sessions/start/",
            {
                "modelType": "mlp",
                "dataset": "synthetic",
                "epochs": "7",
                "param.mlp.hidden_layer_sizes": "32, 16",
                "param.mlp.learning_rate": "0.01",
                "param.mlp.schedule": "step",
                # Another model's inputs, also in the form, do not count.
                "param.logistic.learning_rate": "99",
                "param.randomforest.max_depth": "",
                "param.synthetic.samples": "500",
                "param.common.stratify": "false",
            },
        )
    assert response.status_code == 302
    session = TrainingSession.objects.get()
    assert (session.model_type, session.dataset, session.total_epochs) == (
        "mlp",
        "synthetic",
        7,
    )
    assert session.params["hidden_layer_sizes"] == [32, 16]
    assert session.params["learning_rate"] == 0.01
    assert session.params["schedule"] == "step"
    assert session.params["samples"] == 500
    assert session.params["stratify"] is False


def test_bad_input_shows_the_form_again_with_errors_by_field(alice_client):
    response = alice_client.post(
        "/sessions/start/",
        {
            "modelType": "randomforest",
            "dataset": "iris",
            "epochs": "-3",
            "param.randomforest.trees_per_epoch": "0",
            "param.randomforest.max_features": "most",
        },
    )
    assert response.status_code == 400
    html = response.content.decode()
    assert 'id="error-epochs">epochs must be at least 1<' in html
    assert (
        'id="error-param-randomforest-trees_per_epoch">'
        "trees_per_epoch must be at least 1<" in html
    )
    assert 'id="error-param-randomforest-max_features">' in html
    # What was typed stays in the form.
    assert 'value="-3"' in html
    assert TrainingSession.objects.count() == 0


def test_an_unknown_model_type_is_named_next_to_its_field(alice_client):
    response = alice_client.post("/sessions/start/", {"modelType": "svm"})
    assert response.status_code == 400
    assert 'id="error-modelType">Unknown model type svm' in response.content.decode()
    assert TrainingSession.objects.count() == 0
