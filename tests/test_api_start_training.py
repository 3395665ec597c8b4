import json

import pytest
from django.test import Client

from sessions.models import ApiToken, TrainingSession

pytestmark = pytest.mark.django_db
URL = "/api/ml/start-training"


def post(client, body, **headers):
    return client.post(
        URL,
        data=json.dumps(body) if not isinstance(body, str) else body,
        content_type="application/json",
        **headers,
    )


@pytest.fixture
def token(alice):
    return ApiToken.issue(alice)[1]


def bearer(token):
    return {"HTTP_AUTHORIZATION": f"Bearer {token}"}


def test_it_starts_training_with_a_token(
    client, token, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks() as callbacks:
        response = post(
            client,
            {"modelType": "randomforest", "dataset": "digits", "epochs": 20},
            **bearer(token),
        )
    assert response.status_code == 201
    session = response.json()["session"]
    assert session["status"] == "queued" and session["totalEpochs"] == 20
    assert session["params"]["trees_per_epoch"] == 10
    assert len(callbacks) == 1  # the task is enqueued after the commit
    assert TrainingSession.objects.get(pk=session["id"]).dataset == "digits"


def test_it_fills_in_defaults(client, token):
    response = post(client, {"modelType": "randomforest"}, **bearer(token))
    assert response.json()["session"]["dataset"] == "digits"
    assert response.json()["session"]["totalEpochs"] == 20


@pytest.mark.parametrize(
    "body, field, text",
    [
        ({}, "modelType", "required"),
        ({"modelType": "svm"}, "modelType", "Unknown model type svm"),
        (
            {"modelType": "randomforest", "dataset": "mnist"},
            "dataset",
            "Unknown data set",
        ),
        ({"modelType": "randomforest", "epochs": 0}, "epochs", "at least 1"),
        ({"modelType": "randomforest", "epochs": -5}, "epochs", "at least 1"),
        ({"modelType": "randomforest", "epochs": 10**9}, "epochs", "at most"),
        ({"modelType": "randomforest", "epochs": "many"}, "epochs", "whole number"),
        (
            {"modelType": "randomforest", "params": {"trees_per_epoch": 0}},
            "params.trees_per_epoch",
            "at least 1",
        ),
        (
            {"modelType": "randomforest", "params": {"trees_per_epoch": "ten"}},
            "params.trees_per_epoch",
            "must be an integer",
        ),
        (
            {"modelType": "randomforest", "params": {"nope": 1}},
            "params.nope",
            "Unknown parameter",
        ),
        ({"modelType": "randomforest", "params": [1]}, "params", "JSON object"),
    ],
)
def test_it_rejects_bad_input_naming_the_field(client, token, body, field, text):
    response = post(client, body, **bearer(token))
    assert response.status_code == 400
    assert text in response.json()["fields"][field]
    assert text in response.json()["error"]
    assert TrainingSession.objects.count() == 0


def test_it_rejects_a_body_that_is_not_json(client, token):
    response = post(client, "{not json", **bearer(token))
    assert response.status_code == 400
    assert "not valid JSON" in response.json()["error"]


def test_it_requires_credentials(client):
    response = post(client, {"modelType": "randomforest"})
    assert response.status_code == 401
    assert "Authentication required" in response.json()["error"]


def test_it_rejects_a_revoked_token(client, alice):
    token, raw = ApiToken.issue(alice)
    token.revoke()
    assert post(client, {"modelType": "randomforest"}, **bearer(raw)).status_code == 401


def test_it_enforces_csrf_for_cookie_logins(alice):
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    response = post(client, {"modelType": "randomforest"})
    assert response.status_code == 403
    assert "CSRF" in response.json()["error"]
    client.get("/")  # sets the csrftoken cookie
    response = post(
        client,
        {"modelType": "randomforest"},
        HTTP_X_CSRFTOKEN=client.cookies["csrftoken"].value,
    )
    assert response.status_code == 201


def test_it_rejects_get(client, token):
    assert client.get(URL, **bearer(token)).status_code == 405
